//! `berth-fuzz TARGET [--runs N] [--seed S]`: fuzzes one target (spec, api, http1, lua) and
//! says how many inputs ran and how fast; a failing input is written to
//! `fuzz-failure-TARGET.bin` and the exit code is 1.

use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: berth-fuzz spec|api|http1|lua [--runs N] [--seed S]";
    let target = args.next().and_then(|t| berth_fuzz::Target::parse(&t)).ok_or_else(|| anyhow::anyhow!(usage))?;
    let (mut runs, mut seed) = (1_000_000u64, 1u64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value; {usage}"))?;
        let n: u64 =
            value.replace('_', "").parse().map_err(|_| anyhow::anyhow!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--runs" => runs = n,
            "--seed" => seed = n,
            other => anyhow::bail!("unknown flag {other}; {usage}"),
        }
    }
    let report = berth_fuzz::fuzz(target, runs, seed, |done| eprintln!("{}: {done} runs", target.name()));
    println!(
        "{}: {} runs ({} accepted) in {:.1} s ({:.0}/s), seed {seed}: {}",
        target.name(),
        report.runs,
        report.accepted,
        report.elapsed.as_secs_f64(),
        report.per_second(),
        if report.failure.is_some() { "FAILED" } else { "no failure" }
    );
    if let Some((input, why)) = report.failure {
        let path = format!("fuzz-failure-{}.bin", target.name());
        std::fs::write(&path, &input)?;
        eprintln!("{why}\ninput ({} bytes) written to {path}: {:?}", input.len(), String::from_utf8_lossy(&input));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
