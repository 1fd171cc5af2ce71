//! The `trident explain` page in a real browser: headless Chromium (Debian's
//! `chromium-headless-shell` or `chromium`, or `$TRIDENT_CHROMIUM`) loads each page, and the
//! test checks that no script error reached the console, that every canvas painted pixels
//! (the page writes, per canvas, how many sampled pixels are not white into
//! `body[data-painted]`), and that a screenshot is written. Without a Chromium the test says
//! so and passes: install `chromium-headless-shell` to run it.

use std::path::{Path, PathBuf};
use std::process::Command;
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
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .collect();
        assert!(errors.is_empty(), "{task}: console messages: {errors:?}");
        let painted = dom
            .split("data-painted=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{task}: the page's script did not finish"));
        let counts: Vec<usize> = painted.split(',').map(|n| n.parse().unwrap()).collect();
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
