//! How fast GPT-2's decoding passes read its weights, against libtorch reading the same bytes
//! (issue 17's "how close to the bandwidth bound" question, asked inside one process so that
//! every figure shares the machine's moment and the weights' memory):
//!
//! - one `sum` over a single tensor of the weights' total size (the benchmark's bound reads a
//!   256 MB one in Python);
//! - `sum` over each of the 49 projection weights in model order (12 layers × c_attn,
//!   attn.c_proj, c_fc, mlp.c_proj, then the head);
//! - Trident's streamed batch-1 product over each of them, as `Linear` runs it, alone and
//!   inside a decoding step with helpers (`nn::parallel::decoding_step`);
//! - libtorch's own product over each of them (`linear`: MKL's matrix-vector product);
//!
//! each repeated, alternating, and reported as GB/s of weights (median, 25th percentile,
//! best).
//!
//! ```sh
//! cargo bench --bench passes -- .bench/models/gpt2 [REPEATS]
//! ```
//! Without arguments (as `cargo test --all-targets` runs it) it reads weights/gpt2-tiny twice:
//! a smoke check, not a measurement.

use std::time::Instant;
use tch::{Device, Kind, Tensor};
use trident::core::nn::attention::Projections;
use trident::core::nn::{parallel, streamed};
use trident::core::{Dtype, ModelFiles};
use trident::gpt::GPT2LMHeadModel;

fn main() -> anyhow::Result<()> {
    trident::core::device::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (model, repeats) = match args.as_slice() {
        [] => ("weights/gpt2-tiny".to_string(), 2),
        [model] => (model.clone(), 30),
        [model, n] => (model.clone(), n.parse()?),
        _ => anyhow::bail!("usage: passes MODEL_DIR [REPEATS]"),
    };
    if !streamed::available() {
        println!("this CPU has no AVX-512: the streamed kernel does not run here");
        return Ok(());
    }
    let m = GPT2LMHeadModel::from_pretrained(&ModelFiles::local(&model)?, Device::Cpu, Dtype::F32)?;
    // The projections in the order a decoding step reads them, with their biases.
    let mut weights: Vec<(&Tensor, Option<&Tensor>)> = Vec::new();
    for layer in &m.transformer.h {
        if let Projections::Fused(c_attn) = &layer.self_attention.projections {
            weights.push((&c_attn.weight, c_attn.bias.as_ref()));
        }
        for linear in [
            &layer.self_attention.out,
            &layer.feed_forward.up,
            &layer.feed_forward.down,
        ] {
            weights.push((&linear.weight, linear.bias.as_ref()));
        }
    }
    weights.push((&m.lm_head.weight, None));
    let bytes = weights.iter().map(|(w, _)| w.numel() * 4).sum::<usize>() as f64;
    let one = Tensor::f_randn([(bytes / 4.0) as i64], (Kind::Float, Device::Cpu))?;
    let inputs = weights
        .iter()
        .map(|(w, _)| Tensor::f_randn([1, w.size()[1]], (Kind::Float, Device::Cpu)))
        .collect::<Result<Vec<_>, _>>()?;
    let passes = || -> trident::core::Result<()> {
        for ((w, b), x) in weights.iter().zip(&inputs) {
            let _ = streamed::linear(x, w, *b)?;
        }
        Ok(())
    };
    let names = [
        "one tensor of their size, libtorch sum",
        "each weight, libtorch sum",
        "each weight, streamed product",
        "each weight, streamed product, in a helped step",
        "each weight, libtorch's product (MKL's gemv)",
    ];
    let mut rates: [Vec<f64>; 5] = Default::default();
    let site = &rates as *const _ as usize; // (any address that names this step)
    for repeat in 0..=repeats {
        let mut timed = |i: usize, f: &mut dyn FnMut() -> anyhow::Result<()>| {
            let t = Instant::now();
            let result = f();
            // The first round warms up (and makes the step eligible for helpers).
            if repeat > 0 {
                rates[i].push(bytes / t.elapsed().as_secs_f64() / 1e9);
            }
            result
        };
        timed(0, &mut || {
            let _ = one.f_sum(Kind::Float)?;
            Ok(())
        })?;
        timed(1, &mut || {
            for (w, _) in &weights {
                let _ = w.f_sum(Kind::Float)?;
            }
            Ok(())
        })?;
        timed(2, &mut || Ok(passes()?))?;
        timed(3, &mut || Ok(parallel::decoding_step(site, 1, passes)?))?;
        timed(4, &mut || {
            for ((w, b), x) in weights.iter().zip(&inputs) {
                let _ = x.f_linear(w, *b)?;
            }
            Ok(())
        })?;
    }
    println!(
        "{model}: {} projection weights, {:.1} MB, {repeats} rounds",
        weights.len(),
        bytes / 1e6
    );
    for (name, mut r) in names.iter().zip(rates) {
        r.sort_by(f64::total_cmp);
        if let (Some(best), Some(median), Some(low)) =
            (r.last(), r.get(r.len() / 2), r.get(r.len() / 4))
        {
            println!("{name}: median {median:.1} GB/s, 25th percentile {low:.1}, best {best:.1}");
        }
    }
    Ok(())
}
