//! The `trident explain` page in a real browser: headless Chromium (Debian's
//! `chromium-headless-shell` or `chromium`, or `$TRIDENT_CHROMIUM`) loads each page, and the
//! test checks that no script error reached the console, that every canvas painted pixels
//! (the page writes, per canvas, how many sampled pixels are not white into
//! `body[data-painted]`), and that a screenshot is written; and that a 512-token page (the
//! most a BERT reads) loads and paints within seconds (the page writes the milliseconds from
//! the navigation's start to its maps drawn into `body[data-loaded-ms]`). Without a Chromium
//! the tests say so and pass: install `chromium-headless-shell` to run them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use trident_testing::fixture_dir;

/// A headless Chromium on this machine, if any.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRIDENT_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium-headless-shell", "chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

fn browser(chromium: &Path, args: &[&str]) -> (String, String) {
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// An attribute of `<body>` as the page's script wrote it.
fn body_data<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    dom.split(&format!("data-{name}=\""))
        .nth(1)?
        .split('"')
        .next()
}

/// The sampled painted pixels of each canvas (`body[data-painted]`).
fn painted(dom: &str, what: &str) -> Vec<usize> {
    body_data(dom, "painted")
        .unwrap_or_else(|| panic!("{what}: the page's script did not finish"))
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Console messages and uncaught errors in Chromium's log.
fn errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

#[test]
fn the_page_loads_without_errors_and_draws_its_maps() {
    let Some(chromium) = chromium() else {
        eprintln!("skipped: no headless Chromium (apt install chromium-headless-shell)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("trident-explain-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (task, name, view, text) in [
        (
            "ner",
            "bert-tiny-ner",
            "",
            "Angela Merkel visited Paris on Monday.",
        ),
        (
            "translate",
            "marian-tiny",
            "#map=2&layer=1&head=0",
            "Le chat dort sur le canapé.",
        ),
        (
            "generate",
            "gpt2-tiny",
            "#map=0&head=2",
            "The United Nations said",
        ),
    ] {
        let page = dir.join(format!("{task}.html"));
        let o = Command::new(env!("CARGO_BIN_EXE_trident"))
            .args([
                "explain",
                task,
                "--device",
                "cpu",
                "--max-new-tokens",
                "6",
                "-m",
            ])
            .arg(fixture_dir(name))
            .arg("-o")
            .arg(&page)
            .arg(text)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let url = format!("file://{}{view}", page.display());
        let (dom, log) = browser(&chromium, &["--dump-dom", &url]);
        let errors = errors(&log);
        assert!(errors.is_empty(), "{task}: console messages: {errors:?}");
        let counts = painted(&dom, task);
        // Embeddings, attention, two residual maps, and the output's map where it has one.
        assert!(counts.len() >= 4, "{task}: {counts:?}");
        assert!(
            counts.iter().all(|&n| n > 100),
            "{task}: a map stayed blank: {counts:?}"
        );
        let shot = dir.join(format!("{task}.png"));
        let (_, log) = browser(
            &chromium,
            &[
                "--window-size=1100,1600",
                &format!("--screenshot={}", shot.display()),
                &url,
            ],
        );
        assert!(!log.contains("Uncaught"), "{task}: {log}");
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{task}: screenshot"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A 512-token text still makes a page that loads and draws: no errors, every map painted,
/// and within a bound generous enough for a loaded machine (the measured time is printed; the
/// page's packed maps are what keep it short: see `explain::render::pack_maps`). The fixture
/// is T5's (relative positions: the BERT fixtures stop at 64): `--max-tokens 506` and the task
/// prefix `summarize: ` make 512 encoder tokens, the most its tokenizer takes in one piece, so
/// 8 encoder maps of 262 144 weights each.
#[test]
fn a_512_token_page_loads_and_paints_in_seconds() {
    let Some(chromium) = chromium() else {
        eprintln!("skipped: no headless Chromium (apt install chromium-headless-shell)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("trident-explain-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("summarize-512.html");
    let text = "Angela Merkel visited Paris on Monday with the French president. ".repeat(60);
    let o = Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["explain", "summarize", "--device", "cpu"])
        .args(["--max-tokens", "506", "--max-new-tokens", "2", "-m"])
        .arg(fixture_dir("t5-tiny"))
        .arg("-o")
        .arg(&page)
        .arg(&text)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = std::fs::metadata(&page).unwrap().len();
    let url = format!("file://{}", page.display());
    let start = Instant::now();
    let (dom, log) = browser(&chromium, &["--dump-dom", &url]);
    let wall = start.elapsed();
    let errors = errors(&log);
    assert!(errors.is_empty(), "console messages: {errors:?}");
    assert!(
        dom.contains("512 input tokens"),
        "the text was not cut to 512 tokens"
    );
    let counts = painted(&dom, "ner-512");
    assert!(
        counts.len() >= 4 && counts.iter().all(|&n| n > 100),
        "a map stayed blank: {counts:?}"
    );
    let loaded = body_data(&dom, "loaded-ms").expect("data-loaded-ms");
    eprintln!(
        "512 tokens: page {:.1} MB, painted {loaded} ms after the navigation started, \
         Chromium ran {:.1} s",
        size as f64 / 1e6,
        wall.as_secs_f64()
    );
    let bound = Duration::from_secs(20);
    assert!(wall < bound, "Chromium took {wall:?} (bound {bound:?})");
    assert!(
        loaded.parse::<u64>().unwrap() < bound.as_millis() as u64,
        "painted after {loaded} ms"
    );
    std::fs::remove_dir_all(&dir).ok();
}
