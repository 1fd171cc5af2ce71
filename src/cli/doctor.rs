//! `trident doctor`: what this installation can do, and what is wrong with it.

use clap::Args;
use std::process::ExitCode;
use trident_core::files::{hub_reachable, HubOptions};

/// Options of `trident doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Do not try to reach the Hugging Face Hub.
    #[arg(long)]
    offline: bool,

    /// Skip measuring the CPU kernels (a few seconds).
    #[arg(long)]
    no_kernels: bool,
}

/// Print the checks; exit 1 when libtorch cannot compute.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    println!("trident         {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch        {}", trident_core::LIBTORCH_VERSION);
    println!(
        "threads         {} (change with --threads N)",
        tch::get_num_threads()
    );
    // A real computation: catches a libtorch that loads but cannot run.
    match tch::Tensor::f_ones([2, 2], (tch::Kind::Float, tch::Device::Cpu))
        .and_then(|t| t.f_matmul(&t))
        .and_then(|t| t.f_sum(tch::Kind::Float))
        .map(|t| t.double_value(&[]))
    {
        Ok(v) if (v - 8.0).abs() < 1e-9 => println!("cpu compute     ok"),
        Ok(v) => {
            ok = false;
            println!("cpu compute     WRONG: 2x2 ones matmul summed to {v}, expected 8");
        }
        Err(e) => {
            ok = false;
            println!("cpu compute     FAILED: {e}");
        }
    }
    println!("cpu dtypes      {}", cpu_dtypes());
    if !args.no_kernels {
        kernels();
    }
    let cuda = tch::Cuda::is_available();
    println!(
        "cuda            {}",
        if cuda {
            format!("available, {} device(s)", tch::Cuda::device_count())
        } else if cfg!(feature = "cuda") {
            "not available (no visible GPU or driver)".to_string()
        } else {
            "not available (built without the `cuda` feature)".to_string()
        }
    );
    println!(
        "mps             {}",
        if tch::utils::has_mps() {
            "available"
        } else {
            "not available"
        }
    );
    let hub = HubOptions::from_env();
    let cache_state = if hub.cache_dir.is_dir() {
        let models = std::fs::read_dir(&hub.cache_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("models--"))
                    .count()
            })
            .unwrap_or(0);
        format!("{models} model(s) cached")
    } else {
        "empty (created on first download)".to_string()
    };
    println!(
        "model cache     {} ({cache_state})",
        hub.cache_dir.display()
    );
    if args.offline || hub.offline {
        println!("hub             offline mode (HF_HUB_OFFLINE or --offline): only cached models can be used");
    } else {
        match hub_reachable(&hub) {
            Ok(()) => println!("hub             reachable at {}", hub.endpoint),
            Err(e) => println!(
                "hub             NOT reachable at {} ({e}); local directories and cached models still work",
                hub.endpoint
            ),
        }
    }
    if ok {
        println!("status          ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("status          BROKEN: reinstall libtorch with `make setup`");
        Ok(ExitCode::from(1))
    }
}

/// Measure the projection kernels on the shapes of a 768-wide model (BERT-base, GPT-2), in
/// f32 and int8, as a model's first calls do, and print which kernel each shape class uses
/// and why.
fn kernels() {
    use trident_core::nn::kernels::{self, Policy};
    use trident_core::nn::Linear;
    let policy = match Policy::from_env() {
        Ok(Policy::Measure) => "auto: each shape measured on its first calls".to_string(),
        Ok(Policy::Fixed) => "fixed (TRIDENT_KERNELS): the library's product everywhere".into(),
        Ok(Policy::Force(k)) => format!("{k} wherever it applies (TRIDENT_KERNELS)"),
        Err(e) => format!("INVALID: {e}"),
    };
    println!(
        "kernels         {policy}; oneDNN {}",
        if kernels::has_onednn() {
            "available"
        } else {
            "not built in"
        }
    );
    // Twelve layers' worth of each weight, as in a model: a decoding step streams them all
    // from memory rather than finding one in cache.
    const LAYERS: usize = 12;
    let cpu = (tch::Kind::Float, tch::Device::Cpu);
    println!(
        "parallel        Trident's own kernels run on {}",
        if trident_core::nn::parallel::on_openmp() {
            "libtorch's OpenMP threads"
        } else {
            "rayon's threads (no OpenMP runtime loaded)"
        }
    );
    println!(
        "decoding steps  {}",
        if !trident_core::nn::parallel::on_openmp() {
            "one parallel region per product (no OpenMP runtime to hold the threads in)"
        } else if trident_core::nn::parallel::step_helpers_enabled() {
            "one parallel region per step once its products are all streamed \
             (TRIDENT_STEP_HELPERS=off: one per product)"
        } else {
            "one parallel region per product (TRIDENT_STEP_HELPERS=off)"
        }
    );
    let panels = match Policy::from_env() {
        _ if !trident_core::nn::panels::available() => {
            "kept as rows, the library's product (no AVX-512)"
        }
        Ok(Policy::Measure | Policy::Force(kernels::Kernel::Streamed)) => {
            "an f32 token table tied to its head is stored in panels: the head's product \
             skips the library's per-call packing (TRIDENT_KERNELS=fixed: kept as rows)"
        }
        _ => "kept as rows, the head measured like any projection (TRIDENT_KERNELS)",
    };
    println!("tied heads      {panels}");
    let shapes = [(768, 768), (2304, 768), (3072, 768), (768, 3072)];
    let classes = [false, true]
        .into_iter()
        .flat_map(|int8| shapes.map(|(out, inp)| (out, inp, int8)));
    for (out, inp, int8) in classes {
        let layer = || {
            let w = tch::Tensor::randn([out, inp], cpu);
            if int8 {
                Linear::quantized(&w, None)
            } else {
                Ok(Linear::from_tensors(w, None))
            }
        };
        let Ok(layers) = (0..LAYERS).map(|_| layer()).collect::<Result<Vec<_>, _>>() else {
            println!("                quantizing {out}x{inp} failed");
            return;
        };
        for rows in [1i64, 4, 16, 256] {
            let x = tch::Tensor::randn([rows, inp], cpu);
            for _ in 0..2 {
                for layer in &layers {
                    if layer.forward(&x).is_err() {
                        println!("                measuring {out}x{inp} failed");
                        return;
                    }
                }
            }
        }
    }
    for decision in kernels::report() {
        println!("  {decision}");
    }
}

/// Which `--dtype`s this CPU runs natively: bf16 is emulated (and slower than f32) without
/// AVX512-BF16 or AMX, int8 products want AVX512-VNNI or AVX-VNNI.
fn cpu_dtypes() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        // (AMX detection is not stable in std: Linux lists it in /proc/cpuinfo.)
        let amx = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_bf16"));
        let bf16 = std::arch::is_x86_feature_detected!("avx512bf16") || amx;
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni");
        format!(
            "f32; bf16 {}; int8 {}",
            if bf16 {
                "native (AVX512-BF16/AMX)"
            } else {
                "emulated: prefer f32 or int8"
            },
            if vnni {
                "native (VNNI)"
            } else {
                "without VNNI (slower)"
            }
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "f32, bf16, int8 (speed depends on the CPU; see BENCHMARKS.md)".to_string()
    }
}
