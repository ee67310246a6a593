//! `ipnat import`: an rc.local recipe (ip rule/route/addr) converted to a config.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn run(files: Vec<PathBuf>) -> Result<()> {
    let mut texts = Vec::new();
    for f in &files {
        let bytes = if f.as_os_str() == "-" {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
            b
        } else {
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            let bad = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..bad].iter().filter(|&&b| b == b'\n').count() + 1;
            anyhow::anyhow!("{}:{line}: not UTF-8 text", f.display())
        })?;
        texts.push((f.display().to_string(), text));
    }
    let inputs: Vec<ipnat::import::Input> = texts
        .iter()
        .map(|(name, text)| ipnat::import::Input { name, text })
        .collect();
    let out = ipnat::import::import(&inputs);
    print!("{}", out.render());
    for s in &out.skipped {
        eprintln!(
            "{}:{}: not converted: {}: {}",
            s.file, s.line, s.text, s.why
        );
    }
    if !out.skipped.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
