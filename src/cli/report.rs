//! What the CLI says on stderr besides results: warnings in one style (`warning: …`), repeated
//! ones summarised once with a count, `-q` for silence and `-v` for every detail. No colours
//! are written, so `NO_COLOR` and pipes get plain text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How much to say: 0 quiet, 1 normal, 2 verbose.
static VERBOSITY: AtomicU8 = AtomicU8::new(1);

/// Warnings seen so far, by their shape (digits replaced): the first message and the count.
static SEEN: Mutex<BTreeMap<String, (String, usize)>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The input being processed, named in `-v` warnings (`line 17`).
    static ORIGIN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with warnings attributed to `origin` (`-v` prints it before each).
pub fn with_origin<R>(origin: &str, f: impl FnOnce() -> R) -> R {
    ORIGIN.with_borrow_mut(|o| *o = Some(origin.to_string()));
    let result = f();
    ORIGIN.with_borrow_mut(|o| *o = None);
    result
}

/// Whether `-v` was given: every warning as it happens, with its input.
pub fn verbose() -> bool {
    VERBOSITY.load(Ordering::Relaxed) == 2
}

/// Set how much the CLI says (`-q` → 0, default 1, `-v` → 2).
pub fn set_verbosity(level: u8) {
    VERBOSITY.store(level, Ordering::Relaxed);
}

/// Whether `-q` was given: no summary line, no warnings (errors are always printed).
pub fn quiet() -> bool {
    VERBOSITY.load(Ordering::Relaxed) == 0
}

/// A warning: printed now with `-v`; otherwise counted by its shape and printed once by
/// [`finish`], so that 5,000 windowed texts give one line, not 5,000.
pub fn warn(message: String) {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => {}
        2 => match ORIGIN.with_borrow(Clone::clone) {
            Some(origin) => eprintln!("warning: {origin}: {message}"),
            None => eprintln!("warning: {message}"),
        },
        _ => {
            let shape: String = message
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            seen.entry(shape).or_insert((message, 0)).1 += 1;
        }
    }
}

/// Print the warnings held back: each shape once, with how many more were like it.
pub fn finish() {
    let seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, (first, count)) in seen {
        match count {
            1 => eprintln!("warning: {first}"),
            n => eprintln!(
                "warning: {first} (and {} more like it; -v shows each)",
                n - 1
            ),
        }
    }
}

/// Library warnings (tracing events at WARN) into [`warn`].
pub struct WarningLayer;

impl<S: Subscriber> Layer<S> for WarningLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::WARN {
            return;
        }
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if *event.metadata().level() == Level::ERROR {
            eprintln!("error: {}", message.0);
        } else {
            warn(message.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_of_one_shape_are_counted() {
        set_verbosity(1);
        warn("a text of 80 tokens was split into 3 windows".into());
        warn("a text of 95 tokens was split into 4 windows".into());
        let seen = SEEN.lock().unwrap();
        let (first, count) = seen
            .get("a text of ## tokens was split into # windows")
            .unwrap();
        assert_eq!(
            (first.as_str(), *count),
            ("a text of 80 tokens was split into 3 windows", 2)
        );
    }
}
