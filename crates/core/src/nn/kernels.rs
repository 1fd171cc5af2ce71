//! Which kernel computes a projection on the CPU, chosen by measurement on the machine the
//! model runs on.
//!
//! A projection `x·Wᵀ` can be computed several ways, and which is fastest depends on the CPU,
//! the library build and the shape, not on a rule that holds everywhere. Decoding one token
//! reads the whole weight to produce a few numbers, so it is bound by memory bandwidth: on one
//! AMD EPYC libtorch's matrix-vector product ran on one thread and a split batched product was
//! twice as fast; on an Intel Xeon the library's own product is multi-threaded and the split
//! is half as fast. Large inputs are compute-bound, where oneDNN's GEMM and MKL's compete.
//! At int8, libtorch's integer product competes with Trident's own for few rows.
//!
//! So the choice is measured. Calls are grouped into [`ShapeClass`]es (element kind, weight
//! shape, rows rounded up to a power of two up to [`MANY_ROWS`], one class above). The first
//! calls of a class run each [`Kernel`] candidate in turn on the real inputs and the real
//! weights, in the cache state the model really sees, and record their times per row. A class
//! whose every candidate has [`SAMPLES`] timings after [`WARMUP`] runs its own fastest while
//! the others are measured. Then one kernel is chosen for the whole row group (the classes
//! of one kind and row class: a model's successive projections), the cheapest over the
//! group's calls ([`choose`], a pure function), because switching libraries from one
//! projection to the next costs more than each call's own time shows. Nothing extra is
//! computed: the measuring calls are the model's own work, so the calibration costs only the
//! few calls that ran a slower candidate. The choices are per process and per model
//! ([`ShapeClass::scope`]): the threads and requests that share a model share its choices,
//! but two models in one process (a server's) decide apart, because a row group's best kernel
//! depends on the model's mix of shapes. Shared, an embedding model's 384-wide projections
//! decided the 9–16-row group that GPT-2's decoding then ran: `trident serve`'s generation at
//! 16 clients slowed from 10.1 to 5.9 requests/s once the embedding route had been used.
//!
//! `TRIDENT_KERNELS` overrides the measurement: `fixed` uses the library's product for every
//! shape (the same kernel on every run, for reproducible numbers), `library`, `split`,
//! `onednn` or `streamed` force one kernel wherever it applies, `auto` (the default) measures. [`report`]
//! lists each class seen with its kernel and why; `trident doctor` prints it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use tch::Kind;

/// Timings of each candidate dropped before the ones that count: the first call of a kernel
/// on a shape pays one-off costs (oneDNN creates its primitive, pages are touched).
pub const WARMUP: usize = 1;
/// Timings of each candidate, after [`WARMUP`], whose median decides.
pub const SAMPLES: usize = 3;
/// Another kernel replaces the library's product only when its median is faster by more
/// than this fraction: within timing noise, the library's own choice stays.
pub const MARGIN: f64 = 0.03;
/// A candidate whose fastest counted call is slower than this many times another's slowest
/// is not measured further (`ruled_out`).
pub const RULED_OUT: f64 = 2.0;
/// Counted calls a candidate needs before [`RULED_OUT`] can drop it: one call can be a
/// hiccup. Measured: in 3 runs of about 45, oneDNN's one counted call on OPUS-MT's 512×512
/// encoder projection took 24 ms instead of 3–5, dropped it there, and the whole row group,
/// the 58k-row head included, went to MKL (which took twice oneDNN's time on the group's
/// measured feed-forward shapes); those runs made 257–285 tokens/s, the others 280–521.
pub const RULE_OUT_AFTER: usize = 2;
/// Rows up to which the split product is a candidate (matrix-vector products of decoding).
pub const SPLIT_MAX_ROWS: i64 = 16;
/// Row counts above this share one class: the products are compute-bound there, their time
/// per row hardly changes with the count, and an encoder's batches (whose row counts vary
/// with their lengths) then settle the choice in one batch or two rather than one per
/// power of two.
pub const MANY_ROWS: i64 = 64;

/// A way of computing `x·Wᵀ + b` on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    /// libtorch's `linear`: MKL's (or OpenBLAS's) matrix-vector product or GEMM, as the
    /// library dispatches it.
    Library,
    /// The weight cut into one row block per thread, multiplied as one batched product that
    /// libtorch spreads over its threads (for few rows, where the library's product may use
    /// one thread).
    Split,
    /// oneDNN's GEMM (`mkldnn_linear`), f32 only.
    OneDnn,
    /// Trident's own product for few rows, the weight read as stored: f32, or bf16 widened in
    /// registers, on AVX-512 CPUs ([`super::streamed`]: streamed once up to 4 rows, register
    /// tiles above, up to 64 f32 rows), int8 with the 8-bit dot-product instruction on
    /// AVX-512 VNNI CPUs ([`super::streamed_int8`]).
    Streamed,
}

impl Kernel {
    /// The name used in `TRIDENT_KERNELS`, reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Library => "library",
            Kernel::Split => "split",
            Kernel::OneDnn => "onednn",
            Kernel::Streamed => "streamed",
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How kernels are chosen in this process (`TRIDENT_KERNELS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Measure the candidates on the first calls of each shape class (`auto`, the default).
    Measure,
    /// The library's product everywhere, never measured (`fixed`): the same kernel on every
    /// run and machine, for reproducible numbers.
    Fixed,
    /// One kernel wherever it is a candidate, the library's product elsewhere.
    Force(Kernel),
}

impl Policy {
    /// Parse a `TRIDENT_KERNELS` value.
    pub fn parse(value: &str) -> Result<Policy, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Policy::Measure),
            "fixed" => Ok(Policy::Fixed),
            "library" => Ok(Policy::Force(Kernel::Library)),
            "split" => Ok(Policy::Force(Kernel::Split)),
            "onednn" => Ok(Policy::Force(Kernel::OneDnn)),
            "streamed" => Ok(Policy::Force(Kernel::Streamed)),
            other => Err(format!(
                "TRIDENT_KERNELS={other:?} is not one of auto, fixed, library, split, onednn, \
                 streamed"
            )),
        }
    }

    /// The policy from `TRIDENT_KERNELS` (unset: [`Policy::Measure`]); an invalid value is an
    /// error naming the valid ones.
    pub fn from_env() -> Result<Policy, String> {
        Policy::parse(&std::env::var("TRIDENT_KERNELS").unwrap_or_default())
    }
}

/// This process's policy, read once. An invalid `TRIDENT_KERNELS` measures, with a warning
/// (the CLI checks the variable first and refuses it with [`Policy::from_env`]'s message).
pub fn policy() -> Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    *POLICY.get_or_init(|| {
        Policy::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; measuring kernels as with `auto`");
            Policy::Measure
        })
    })
}

/// The calls that share one kernel choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShapeClass {
    /// The model the projection belongs to ([`new_scope`]; 0 for projections of no loaded
    /// model): each model measures and decides its own classes and row groups.
    pub scope: u32,
    /// Element kind of input and weight.
    pub kind: Kind,
    /// Weight rows (output width).
    pub out: i64,
    /// Weight columns (input width).
    pub in_dim: i64,
    /// The input rows rounded up to a power of two (calls with 5 to 8 rows share a class), or
    /// `i64::MAX` for every count above [`MANY_ROWS`].
    pub rows: i64,
}

impl ShapeClass {
    /// The class of a call with `rows` input rows on a `[out, in_dim]` weight of `kind`.
    pub fn new(kind: Kind, out: i64, in_dim: i64, rows: i64) -> Self {
        let rows = if rows > MANY_ROWS {
            i64::MAX
        } else {
            (rows.max(1) as u64).next_power_of_two() as i64 // (1..=64: no overflow)
        };
        ShapeClass {
            scope: 0,
            kind,
            out,
            in_dim,
            rows,
        }
    }

    /// The same class in the model `scope` ([`new_scope`]).
    pub fn of(self, scope: u32) -> Self {
        ShapeClass { scope, ..self }
    }

    /// How its candidates' timings are compared: by their fastest above [`MANY_ROWS`]
    /// (compute-bound), else by their median.
    pub fn estimate(&self) -> Estimate {
        if self.rows == i64::MAX {
            Estimate::Fastest
        } else {
            Estimate::Median
        }
    }

    /// The kernels that compete on this class: the library's product always, the split
    /// product for few rows, oneDNN for f32 when libtorch has it, the streamed product for few
    /// f32 or bf16 rows on CPUs that run it.
    pub fn candidates(&self, onednn: bool) -> Vec<Kernel> {
        let mut c = vec![Kernel::Library];
        if self.kind == Kind::Int8 {
            // libtorch's integer product (`_int_mm`), and for few rows Trident's streamed one
            // where the CPU runs it.
            if self.rows <= super::streamed_int8::MAX_ROWS && super::streamed_int8::available() {
                c.push(Kernel::Streamed);
            }
            return c;
        }
        if self.rows <= SPLIT_MAX_ROWS && self.out >= 2 {
            c.push(Kernel::Split);
        }
        if onednn && self.kind == Kind::Float {
            c.push(Kernel::OneDnn);
        }
        if super::streamed::takes(self.kind)
            && self.rows <= super::streamed::max_rows(self.kind)
            && super::streamed::available()
        {
            c.push(Kernel::Streamed);
        }
        c
    }
}

impl fmt::Display for ShapeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Float => "f32".to_string(),
            Kind::BFloat16 => "bf16".to_string(),
            Kind::Int8 => "int8".to_string(),
            other => format!("{other:?}"),
        };
        let rows = match self.rows {
            1 => "1 row".to_string(),
            2 => "2 rows".to_string(),
            i64::MAX => format!("{}+ rows", MANY_ROWS + 1),
            r => format!("{}-{r} rows", r / 2 + 1),
        };
        write!(f, "{kind} {}x{} {rows}", self.out, self.in_dim)
    }
}

/// How a candidate's counted timings become the one time it is compared by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimate {
    /// Their median: for few rows, where a product streams its weight from memory and the
    /// calls' times scatter both ways with the memory's state.
    Median,
    /// Their fastest: for the compute-bound class above [`MANY_ROWS`], where nothing makes a
    /// call faster than the kernel can be and much makes it slower (the first forward pass
    /// faults its activations in, a request of another model runs beside it). Measured in
    /// `trident serve` with three models: oneDNN's counted calls on bert-base's 768×768
    /// projection took 26.4, 5.8 and 20.9 ms per 1024 rows, MKL's 26.1, 10.5 and 8.1; the
    /// medians chose MKL, and NER ran at 150 ms a request instead of oneDNN's 87.
    Fastest,
}

/// The [`Estimate`] of the timings that count (after [`WARMUP`]), or `None` when there are
/// fewer than [`SAMPLES`] of them.
fn settled(timings: &[f64], estimate: Estimate) -> Option<f64> {
    let counted = timings.get(WARMUP..)?;
    if counted.len() < SAMPLES {
        return None;
    }
    let mut v = counted.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(match estimate {
        Estimate::Fastest => v[0],
        Estimate::Median if v.len() % 2 == 1 => v[mid],
        Estimate::Median => (v[mid - 1] + v[mid]) / 2.0,
    })
}

/// The timings that count (after [`WARMUP`]).
fn counted(timings: &[f64]) -> &[f64] {
    timings.get(WARMUP..).unwrap_or(&[])
}

/// Whether candidate `i` has lost already: after [`RULE_OUT_AFTER`] counted calls, its
/// fastest took more than [`RULED_OUT`] times the slowest counted call of another candidate.
/// A kernel that far behind cannot win on more samples, and each of its calls costs the
/// model real time (the split product of one row runs 2–3× slower than MKL's on an Intel
/// Xeon).
fn ruled_out(timings: &[(Kernel, Vec<f64>)], i: usize) -> bool {
    let own = counted(&timings[i].1);
    if own.len() < RULE_OUT_AFTER {
        return false;
    }
    let fastest = own.iter().copied().reduce(f64::min);
    let others_slowest = timings
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, (_, t))| counted(t).iter().copied().reduce(f64::max))
        .reduce(f64::min);
    matches!((fastest, others_slowest), (Some(f), Some(o)) if f > RULED_OUT * o)
}

/// Each candidate's time ([`Estimate`] after [`WARMUP`]), or for one [`ruled_out`] early its
/// fastest call (a bound that still loses); `None` while some other candidate has fewer than
/// [`SAMPLES`] timings.
fn medians(timings: &[(Kernel, Vec<f64>)], estimate: Estimate) -> Option<Vec<(Kernel, f64)>> {
    (0..timings.len())
        .map(|i| candidate_time(timings, i, estimate).map(|m| (timings[i].0, m)))
        .collect()
}

/// Candidate `i`'s time, or its fastest call when [`ruled_out`], or `None`.
fn candidate_time(timings: &[(Kernel, Vec<f64>)], i: usize, estimate: Estimate) -> Option<f64> {
    let t = &timings[i].1;
    settled(t, estimate).or_else(|| {
        ruled_out(timings, i)
            .then(|| counted(t).iter().copied().reduce(f64::min))
            .flatten()
    })
}

/// The candidate to measure next: of those neither settled nor [`ruled_out`], the one with
/// the fewest timings (round robin); `None` when there is none.
fn next_to_measure(timings: &[(Kernel, Vec<f64>)]) -> Option<Kernel> {
    timings
        .iter()
        .enumerate()
        .filter(|(i, (_, t))| settled(t, Estimate::Median).is_none() && !ruled_out(timings, *i))
        .min_by_key(|(_, (_, t))| t.len())
        .map(|(_, (k, _))| *k)
}

/// One shape of a row group as [`choose`] weighs it.
#[derive(Clone, Copy, Debug)]
pub struct ShapeTimings<'a> {
    /// Calls of the shape so far.
    pub calls: f64,
    /// Weight elements (`out × in`): with `calls`, the share of the group's work it stands for.
    pub size: f64,
    /// Each candidate's timings in the order they were taken (seconds per row).
    pub timings: &'a [(Kernel, Vec<f64>)],
    /// How they are compared ([`ShapeClass::estimate`]).
    pub estimate: Estimate,
}

/// Share of a row group's work (calls × weight size) whose shapes must be measured before
/// the group is decided: a shape called once per batch on a tiny weight (a classifier head)
/// need not hold up the decision, a large one (an LM head) must not be left out of it.
pub const COVERAGE: f64 = 0.9;

/// The one kernel for every shape of a row group (same element kind and row class), or
/// `None` while too little of the group is measured. One kernel per group because a model's
/// projections run one after another: alternating libraries from one projection to the next
/// costs more than each call's own time shows (measured: GPT-2 at 8 rows with MKL and
/// oneDNN mixed by per-shape medians ran 10 % slower than oneDNN alone, which those medians
/// said was slower).
///
/// The shapes whose every candidate has [`WARMUP`] + [`SAMPLES`] timings must stand for at
/// least [`COVERAGE`] of the group's work. Each candidate's cost is then the sum over them
/// of calls × median time; the cheapest wins, and the library's product is kept unless the
/// winner beats it by more than [`MARGIN`].
pub fn choose(shapes: &[ShapeTimings]) -> Option<Kernel> {
    let total: f64 = shapes.iter().map(|s| s.calls * s.size).sum();
    let settled: Vec<(f64, Vec<(Kernel, f64)>)> = shapes
        .iter()
        .filter_map(|s| medians(s.timings, s.estimate).map(|m| (s.calls, m)))
        .collect();
    let covered: f64 = shapes
        .iter()
        .filter(|s| medians(s.timings, s.estimate).is_some())
        .map(|s| s.calls * s.size)
        .sum();
    if settled.is_empty() || covered < COVERAGE * total {
        return None;
    }
    // The candidates every settled shape has, with their weighted costs.
    let costs: Vec<(Kernel, f64)> = settled[0]
        .1
        .iter()
        .filter_map(|&(k, _)| {
            settled
                .iter()
                .map(|(calls, m)| m.iter().find(|(c, _)| *c == k).map(|(_, t)| calls * t))
                .sum::<Option<f64>>()
                .map(|cost| (k, cost))
        })
        .collect();
    let (best, best_t) = costs.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))?;
    match costs.iter().find(|(k, _)| *k == Kernel::Library) {
        Some(&(_, lib_t)) if best_t >= lib_t * (1.0 - MARGIN) => Some(Kernel::Library),
        _ => Some(best),
    }
}

/// What [`plan`] says a call should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The class is decided: run this kernel.
    Use(Kernel),
    /// The class is being measured: run this kernel, time it, and [`record`] the time.
    Measure(Kernel),
}

/// One class's state.
struct Entry {
    /// Each candidate's timings so far (seconds per row).
    timings: Vec<(Kernel, Vec<f64>)>,
    /// The decided kernel, and whether it was measured (else set by the policy).
    chosen: Option<(Kernel, bool)>,
    /// Calls so far.
    calls: u64,
}

/// A row group: the shape classes of one model, element kind and row class.
type Group = (u32, Kind, i64);

/// A new kernel-choice scope, one per loaded model (the weight loader takes one): numbers
/// from 1, never reused in the process.
pub fn new_scope() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The shape classes seen, and the decided row groups.
#[derive(Default)]
struct Table {
    classes: HashMap<ShapeClass, Entry>,
    groups: HashMap<Group, Kernel>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn group_of(class: &ShapeClass) -> Group {
    (class.scope, class.kind, class.rows)
}

/// The kernel `class` runs once it is decided (counted as a call of it), or `None` while it is
/// still being measured or before its first call ([`plan`] then says what to run). For
/// callers that run several classes together only when all are settled on one kernel.
pub fn decided(class: ShapeClass) -> Option<Kernel> {
    let mut table = table().lock().ok()?;
    let entry = table.classes.get_mut(&class)?;
    let (kernel, _) = entry.chosen?;
    entry.calls += 1;
    Some(kernel)
}

/// Whether libtorch was built with oneDNN (MKL-DNN), checked once.
pub fn has_onednn() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(tch::utils::has_mkldnn)
}

/// The kernel for the next call of `class` under this process's [`policy`].
pub fn plan(class: ShapeClass) -> Plan {
    let Ok(mut table) = table().lock() else {
        return Plan::Use(Kernel::Library); // (a panic elsewhere poisoned it: stay correct)
    };
    let group = table.groups.get(&group_of(&class)).copied();
    let entry = table.classes.entry(class).or_insert_with(|| {
        let candidates = class.candidates(has_onednn());
        let chosen = match (policy(), group) {
            // A shape new to a decided group runs the group's kernel.
            (Policy::Measure, Some(k)) if candidates.contains(&k) => Some((k, true)),
            (Policy::Measure, _) if candidates.len() > 1 => None,
            (Policy::Measure | Policy::Fixed, _) => Some((Kernel::Library, false)),
            (Policy::Force(k), _) if candidates.contains(&k) => Some((k, false)),
            (Policy::Force(_), _) => Some((Kernel::Library, false)),
        };
        Entry {
            timings: candidates.into_iter().map(|k| (k, Vec::new())).collect(),
            chosen,
            calls: 0,
        }
    });
    entry.calls += 1;
    match (entry.chosen, own_choice(&entry.timings, class.estimate())) {
        (Some((k, _)), _) => Plan::Use(k),
        // Measured, but its group is not decided yet: its own fastest meanwhile.
        (None, Some(k)) => Plan::Use(k),
        // Round robin over the candidates still in the running.
        (None, None) => {
            next_to_measure(&entry.timings).map_or(Plan::Use(Kernel::Library), Plan::Measure)
        }
    }
}

/// The kernel a measured class runs while its row group is not decided: its own fastest,
/// or `None` while its own candidates are still being measured.
fn own_choice(timings: &[(Kernel, Vec<f64>)], estimate: Estimate) -> Option<Kernel> {
    choose(&[ShapeTimings {
        calls: 1.0,
        size: 1.0,
        timings,
        estimate,
    }])
}

/// Record that `kernel` took `seconds_per_row` on a call of `class`; decides the class's row
/// group when enough of it is measured ([`choose`]).
pub fn record(class: ShapeClass, kernel: Kernel, seconds_per_row: f64) {
    let Ok(mut table) = table().lock() else {
        return;
    };
    let Some(entry) = table.classes.get_mut(&class) else {
        return;
    };
    if entry.chosen.is_some() {
        return;
    }
    if let Some((_, t)) = entry.timings.iter_mut().find(|(k, _)| *k == kernel) {
        t.push(seconds_per_row);
    }
    let group = group_of(&class);
    let members: Vec<ShapeTimings> = table
        .classes
        .iter()
        .filter(|(c, e)| {
            group_of(c) == group && (e.chosen.is_none() || e.chosen.is_some_and(|(_, m)| m))
        })
        .map(|(c, e)| ShapeTimings {
            calls: e.calls as f64,
            size: (c.out * c.in_dim) as f64,
            timings: &e.timings,
            estimate: c.estimate(),
        })
        .collect();
    if let Some(k) = choose(&members) {
        table.groups.insert(group, k);
        for (c, e) in table.classes.iter_mut() {
            if group_of(c) == group && e.chosen.is_none() {
                let k = if e.timings.iter().any(|(c, _)| *c == k) {
                    k
                } else {
                    Kernel::Library
                };
                e.chosen = Some((k, true));
            }
        }
    }
}

/// One shape class seen in this process: its kernel and why.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The class.
    pub class: ShapeClass,
    /// Its model's scope, named where the process has classes of several models.
    pub model: Option<u32>,
    /// The kernel in use, or `None` while it is still being measured.
    pub kernel: Option<Kernel>,
    /// Each candidate's median time (ms) for the class's largest row count (1024 rows in the
    /// class above [`MANY_ROWS`]), when measured.
    pub medians_ms: Vec<(Kernel, f64)>,
    /// Why: "measured", or the policy that set it.
    pub why: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kernel = self.kernel.map_or("measuring", Kernel::name);
        if let Some(model) = self.model {
            write!(f, "model {model}, ")?;
        }
        write!(f, "{}: {kernel} ({})", self.class, self.why)
    }
}

/// Every shape class this process has seen, sorted by kind, shape and rows.
pub fn report() -> Vec<Decision> {
    let Ok(table) = table().lock() else {
        return Vec::new();
    };
    let scopes: std::collections::HashSet<u32> = table.classes.keys().map(|c| c.scope).collect();
    let mut out: Vec<Decision> = table
        .classes
        .iter()
        .map(|(class, entry)| {
            // Per call of the class's largest row count; per 1024 rows above MANY_ROWS.
            let per = if class.rows == i64::MAX {
                1024
            } else {
                class.rows
            };
            let medians_ms: Vec<(Kernel, f64)> = (0..entry.timings.len())
                .filter_map(|i| {
                    candidate_time(&entry.timings, i, class.estimate())
                        .map(|m| (entry.timings[i].0, m * per as f64 * 1e3))
                })
                .collect();
            let stat = match class.estimate() {
                Estimate::Median => "medians",
                Estimate::Fastest => "fastest",
            };
            // "time per row: library 0.064 ms, split 0.133 ms (best call; dropped, …)".
            let times = format!(
                "time per {}: {}",
                if per == 1 {
                    "row".to_string()
                } else {
                    format!("{per} rows")
                },
                medians_ms
                    .iter()
                    .map(|(k, ms)| {
                        let dropped = entry
                            .timings
                            .iter()
                            .any(|(c, t)| c == k && settled(t, Estimate::Median).is_none());
                        if dropped {
                            format!("{k} {ms:.3} ms (best call; dropped, over {RULED_OUT}× slower)")
                        } else {
                            format!("{k} {ms:.3} ms")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let why = match entry.chosen {
                Some((_, true)) if medians_ms.is_empty() => {
                    "chosen for its row group, measured on the group's other shapes".to_string()
                }
                Some((_, true)) => format!(
                    "measured with its row group (one kernel for all shapes of this kind \
                     and row count); this shape's {stat} of {SAMPLES} calls, {times}"
                ),
                Some((_, false)) => match policy() {
                    Policy::Measure if class.kind == Kind::Int8 => format!(
                        "libtorch's integer product, the only int8 kernel {}",
                        if super::streamed_int8::available() {
                            "above 8 rows"
                        } else {
                            "on a CPU without AVX-512 VNNI"
                        }
                    ),
                    Policy::Measure => "the only candidate".to_string(),
                    Policy::Fixed => "TRIDENT_KERNELS=fixed".to_string(),
                    Policy::Force(k) if entry.timings.iter().any(|(c, _)| *c == k) => {
                        format!("TRIDENT_KERNELS={k}")
                    }
                    Policy::Force(k) => format!("TRIDENT_KERNELS={k}, which does not apply here"),
                },
                // Measured itself, but its row group waits for other shapes: `plan` runs
                // the shape's own fastest meanwhile.
                None if own_choice(&entry.timings, class.estimate()).is_some() => format!(
                    "measured on its own (its row group waits for other shapes); this \
                     shape's {stat} of {SAMPLES} calls, {times}"
                ),
                None => format!(
                    "still measuring: {}",
                    entry
                        .timings
                        .iter()
                        .map(|(k, t)| format!("{k} {} of {}", t.len(), WARMUP + SAMPLES))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            Decision {
                class: *class,
                model: (scopes.len() > 1).then_some(class.scope),
                kernel: entry
                    .chosen
                    .map(|(k, _)| k)
                    .or_else(|| own_choice(&entry.timings, class.estimate())),
                medians_ms,
                why,
            }
        })
        .collect();
    out.sort_by_key(|d| {
        (
            d.class.scope,
            d.class.kind != Kind::Float,
            d.class.out,
            d.class.in_dim,
            d.class.rows,
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kernel::*;

    fn timings(k: Kernel, t: &[f64]) -> (Kernel, Vec<f64>) {
        (k, t.to_vec())
    }

    /// One shape's choice.
    fn alone(t: &[(Kernel, Vec<f64>)]) -> Option<Kernel> {
        choose(&[ShapeTimings {
            calls: 1.0,
            size: 1.0,
            timings: t,
            estimate: Estimate::Median,
        }])
    }

    #[test]
    fn waits_until_every_candidate_has_its_samples() {
        // Split has only warm-up + 2 timings.
        let t = [
            timings(Library, &[9.0, 1.0, 1.0, 1.0]),
            timings(Split, &[9.0, 0.5, 0.5]),
        ];
        assert_eq!(alone(&t), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn a_far_slower_candidate_is_dropped_after_two_counted_calls() {
        // Split's two counted calls took more than twice the library's slowest: it is not
        // measured again, and the choice waits only for the library's samples.
        let mut t = vec![
            timings(Library, &[9.0, 1.0, 1.2]),
            timings(Split, &[9.0, 2.5, 2.6]),
        ];
        assert_eq!(next_to_measure(&t), Some(Library));
        assert_eq!(alone(&t), None);
        t[0].1.push(1.1);
        assert_eq!(next_to_measure(&t), None);
        assert_eq!(alone(&t), Some(Library));
        // Within the factor it keeps its turn: 2.3 is not more than twice 1.2.
        let close = [
            timings(Library, &[9.0, 1.0, 1.2, 1.1]),
            timings(Split, &[9.0, 2.3, 2.3]),
        ];
        assert_eq!(next_to_measure(&close), Some(Split));
        // One slow counted call is not enough (a hiccup): it is measured again, and its
        // median then decides.
        let mut hiccup = vec![
            timings(Library, &[9.0, 2.0, 2.1, 2.0]),
            timings(OneDnn, &[9.0, 8.0]),
        ];
        assert_eq!(next_to_measure(&hiccup), Some(OneDnn));
        hiccup[1].1.extend([1.0, 1.1]);
        assert_eq!(alone(&hiccup), Some(OneDnn));
        // A warm-up alone rules nothing out.
        let warm = [timings(Library, &[1.0, 1.0]), timings(Split, &[50.0])];
        assert_eq!(next_to_measure(&warm), Some(Split));
    }

    #[test]
    fn compute_bound_classes_compare_their_fastest_calls() {
        // The serve measurement of bert-base's 768×768 projection (ms per 1024 rows, the
        // warm-up first): by medians MKL wins, by fastest calls oneDNN does, as it does in
        // every quiet run.
        let t = [
            timings(Library, &[52.7, 26.1, 10.5, 8.1]),
            timings(OneDnn, &[104.4, 26.4, 5.8, 20.9]),
        ];
        let by = |estimate| {
            choose(&[ShapeTimings {
                calls: 1.0,
                size: 1.0,
                timings: &t,
                estimate,
            }])
        };
        assert_eq!(by(Estimate::Median), Some(Library));
        assert_eq!(by(Estimate::Fastest), Some(OneDnn));
        // Which classes use which: the fastest only above MANY_ROWS.
        assert_eq!(
            ShapeClass::new(Kind::Float, 768, 768, 150).estimate(),
            Estimate::Fastest
        );
        assert_eq!(
            ShapeClass::new(Kind::Float, 768, 768, MANY_ROWS).estimate(),
            Estimate::Median
        );
    }

    #[test]
    fn the_fastest_median_wins_and_warmup_is_ignored() {
        // Library's warm-up call was the fastest call of all: it must not count.
        let t = [
            timings(Library, &[0.1, 2.0, 2.1, 1.9]),
            timings(Split, &[5.0, 1.0, 1.1, 9.0]),
            timings(OneDnn, &[5.0, 1.5, 1.4, 1.6]),
        ];
        assert_eq!(alone(&t), Some(Split));
        // An outlier in a kernel's samples does not decide: the median does.
        let t = [
            timings(Library, &[3.0, 1.0, 1.0, 50.0]),
            timings(Split, &[3.0, 2.0, 2.0, 0.1]),
        ];
        assert_eq!(alone(&t), Some(Library));
    }

    #[test]
    fn the_library_stays_within_the_margin() {
        let lib = 1.0;
        let slightly = lib * (1.0 - MARGIN / 2.0);
        let clearly = lib * (1.0 - 2.0 * MARGIN);
        let t = [
            timings(Library, &[1.0, lib, lib, lib]),
            timings(OneDnn, &[1.0, slightly, slightly, slightly]),
        ];
        assert_eq!(alone(&t), Some(Library));
        let t = [
            timings(Library, &[1.0, lib, lib, lib]),
            timings(OneDnn, &[1.0, clearly, clearly, clearly]),
        ];
        assert_eq!(alone(&t), Some(OneDnn));
    }

    /// A group's kernel is the cheapest over all its calls, not each shape's favourite:
    /// here the frequent small shape prefers the library, the head oneDNN, and the head's
    /// time decides.
    #[test]
    fn a_row_group_takes_the_cheapest_kernel_over_its_calls() {
        let layer = [
            timings(Library, &[1.0, 1.0, 1.0, 1.0]),
            timings(OneDnn, &[1.0, 1.2, 1.2, 1.2]),
        ];
        let head = [
            timings(Library, &[9.0, 18.0, 18.0, 18.0]),
            timings(OneDnn, &[9.0, 10.0, 10.0, 10.0]),
        ];
        let shape = |calls: f64, size: f64, t| ShapeTimings {
            calls,
            size,
            timings: t,
            estimate: Estimate::Median,
        };
        // 12 layer calls per head call: library costs 12 + 18 = 30, oneDNN 14.4 + 10 = 24.4.
        let group = [shape(12.0, 1.0, &layer), shape(1.0, 1.0, &head)];
        assert_eq!(choose(&group), Some(OneDnn));
        // With 48 layer calls per head call the library is cheaper (66 against 67.6).
        let group = [shape(48.0, 1.0, &layer), shape(1.0, 1.0, &head)];
        assert_eq!(choose(&group), Some(Library));
    }

    /// A shape that is most of the group's work must be measured before the group is
    /// decided; a tiny one need not be.
    #[test]
    fn a_row_group_waits_for_its_large_shapes_only() {
        let settled = [
            timings(Library, &[1.0, 1.0, 1.0, 1.0]),
            timings(OneDnn, &[1.0, 0.5, 0.5, 0.5]),
        ];
        let unsettled = [timings(Library, &[1.0, 1.0]), timings(OneDnn, &[1.0])];
        let shape = |calls: f64, size: f64, t| ShapeTimings {
            calls,
            size,
            timings: t,
            estimate: Estimate::Median,
        };
        // The unsettled shape is a third of the work: wait.
        let group = [shape(10.0, 2.0, &settled), shape(1.0, 10.0, &unsettled)];
        assert_eq!(choose(&group), None);
        // It is 1 % of the work (a classifier head): decide without it.
        let group = [shape(10.0, 100.0, &settled), shape(1.0, 10.0, &unsettled)];
        assert_eq!(choose(&group), Some(OneDnn));
    }

    /// A shape measured to the end runs (and reports) its own fastest while a larger shape
    /// of its row group is still unmeasured: not "still measuring".
    #[test]
    fn a_measured_shape_runs_its_own_fastest_while_its_group_waits() {
        if policy() != Policy::Measure {
            return;
        }
        // f16 at 4 rows: a row group no other test uses.
        let small = ShapeClass::new(Kind::Half, 3, 5, 4);
        let large = ShapeClass::new(Kind::Half, 900, 700, 3);
        assert_eq!(plan(large), Plan::Measure(Kernel::Library));
        for _ in 0..WARMUP + SAMPLES {
            for (kernel, t) in [(Kernel::Library, 2.0), (Kernel::Split, 1.0)] {
                assert_eq!(plan(small), Plan::Measure(kernel));
                record(small, kernel, t);
            }
        }
        assert_eq!(plan(small), Plan::Use(Kernel::Split));
        let report = report();
        let d = report.iter().find(|d| d.class == small).unwrap();
        assert_eq!(d.kernel, Some(Kernel::Split), "{d}");
        assert!(d.why.starts_with("measured on its own"), "{d}");
        let d = report.iter().find(|d| d.class == large).unwrap();
        assert_eq!(d.kernel, None, "{d}");
        assert!(d.why.starts_with("still measuring"), "{d}");
    }

    #[test]
    fn each_model_decides_its_own_row_groups() {
        if policy() != Policy::Measure {
            return;
        }
        // Two models (scopes of their own, so no other test shares them) with a shape of the
        // same kind and rows: the first decides its group for the split product.
        let (a, b) = (new_scope(), new_scope());
        let first = ShapeClass::new(Kind::Half, 11, 13, 2).of(a);
        for _ in 0..WARMUP + SAMPLES {
            for (kernel, t) in [(Kernel::Library, 2.0), (Kernel::Split, 1.0)] {
                assert_eq!(plan(first), Plan::Measure(kernel));
                record(first, kernel, t);
            }
        }
        assert_eq!(plan(first), Plan::Use(Kernel::Split));
        // A new shape of the first model's group runs the group's kernel at once ...
        let same_model = ShapeClass::new(Kind::Half, 17, 13, 2).of(a);
        assert_eq!(plan(same_model), Plan::Use(Kernel::Split));
        // ... while the second model's shapes of that kind and rows are measured afresh.
        let other_model = ShapeClass::new(Kind::Half, 17, 13, 2).of(b);
        assert_eq!(plan(other_model), Plan::Measure(Kernel::Library));
        let report = report();
        let d = report.iter().find(|d| d.class == other_model).unwrap();
        assert_eq!(d.model, Some(b), "several models: each line names its own");
        assert!(
            d.to_string().starts_with(&format!("model {b}, Half 17x13")),
            "{d}"
        );
    }

    #[test]
    fn shape_classes_round_rows_up_and_list_their_candidates() {
        let c = ShapeClass::new(Kind::Float, 768, 3072, 5);
        assert_eq!(c.rows, 8);
        assert_eq!(c.to_string(), "f32 768x3072 5-8 rows");
        let mut f32_decoding = vec![Library, Split, OneDnn];
        if crate::nn::streamed::available() {
            f32_decoding.push(Streamed);
        }
        assert_eq!(c.candidates(true), f32_decoding);
        // 16 rows: split still, and for f32 the streamed product's tiles (up to 64 rows);
        // bf16 streams up to 8 rows only.
        assert_eq!(
            ShapeClass::new(Kind::Float, 768, 768, 16).candidates(true),
            f32_decoding
        );
        assert_eq!(
            ShapeClass::new(Kind::BFloat16, 768, 768, 16).candidates(true),
            [Library, Split]
        );
        let mut f32_tiles = vec![Library, OneDnn];
        if crate::nn::streamed::available() {
            f32_tiles.push(Streamed);
        }
        assert_eq!(
            ShapeClass::new(Kind::Float, 768, 768, 64).candidates(true),
            f32_tiles
        );
        assert_eq!(
            ShapeClass::new(Kind::Float, 768, 768, 65).candidates(true),
            [Library, OneDnn]
        );
        assert_eq!(ShapeClass::new(Kind::Float, 768, 768, 1).rows, 1);
        assert_eq!(ShapeClass::new(Kind::Float, 768, 768, 0).rows, 1);
        // Many rows: no split; bf16: no oneDNN (libtorch's bf16 product is oneDNN's already).
        let big = ShapeClass::new(Kind::BFloat16, 768, 768, 1000);
        assert_eq!(big, ShapeClass::new(Kind::BFloat16, 768, 768, 65));
        assert_eq!(big.to_string(), "bf16 768x768 65+ rows");
        assert_eq!(ShapeClass::new(Kind::Float, 768, 768, 64).rows, 64);
        assert_eq!(big.candidates(true), [Library]);
        // Few bf16 (or f32) rows: the streamed product too, where the CPU runs it.
        let decoding = ShapeClass::new(Kind::BFloat16, 768, 768, 1).candidates(true);
        assert_eq!(
            decoding.contains(&Streamed),
            crate::nn::streamed::available()
        );
        assert_eq!(
            ShapeClass::new(Kind::Float, 768, 768, 65).candidates(false),
            [Library]
        );
        // int8: libtorch's integer product, and for few rows the streamed one where the
        // CPU runs it.
        let int8 = ShapeClass::new(Kind::Int8, 768, 768, 1).candidates(true);
        assert_eq!(
            int8.contains(&Streamed),
            crate::nn::streamed_int8::available()
        );
        assert_eq!(
            ShapeClass::new(Kind::Int8, 768, 768, 9).candidates(true),
            [Library]
        );
    }

    #[test]
    fn policies_parse_and_bad_values_name_the_good_ones() {
        assert_eq!(Policy::parse("").unwrap(), Policy::Measure);
        assert_eq!(Policy::parse("Auto").unwrap(), Policy::Measure);
        assert_eq!(Policy::parse("fixed").unwrap(), Policy::Fixed);
        assert_eq!(Policy::parse("split").unwrap(), Policy::Force(Split));
        let err = Policy::parse("fast").unwrap_err();
        assert!(
            err.contains("\"fast\"") && err.contains("auto, fixed"),
            "{err}"
        );
    }
}
