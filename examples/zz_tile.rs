use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trident::core::nn::streamed;
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
fn main() {
    trident::core::device::tune_allocator();
    let shapes: Vec<(i64, i64, i64)> = vec![
        (58101, 512, 64),
        (32128, 512, 32),
        (50257, 768, 16),
        (50257, 768, 8),
        (512, 512, 64),
        (2048, 512, 64),
        (512, 2048, 64),
        (512, 512, 32),
        (2048, 512, 32),
        (3072, 768, 8),
    ];
    let mut tot = (0.0, 0.0);
    for (n, k, m) in shapes {
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([n], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
        let (mut a, mut s) = (vec![], vec![]);
        for _ in 0..2 {
            let _ = x.linear(&w, Some(&b));
            let _ = streamed::linear(&x, &w, Some(&b)).unwrap();
        }
        for _ in 0..9 {
            let t = Instant::now();
            let _ = x.linear(&w, Some(&b));
            a.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = streamed::linear(&x, &w, Some(&b)).unwrap();
            s.push(t.elapsed().as_secs_f64());
        }
        let (a, s) = (med(a), med(s));
        let fl = 2.0 * (n * k * m) as f64 / 1e9;
        tot.0 += (a / s).ln();
        tot.1 += 1.0;
        println!(
            "{n}x{k} rows {m}: library {:.3} ms ({:.0} GF/s) tiles {:.3} ms ({:.0} GF/s) = {:.2}x",
            a * 1e3,
            fl / a,
            s * 1e3,
            fl / s,
            a / s
        );
    }
    println!("geomean {:.3}", (tot.0 / tot.1).exp());
}
