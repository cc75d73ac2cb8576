//! A short run of every fuzz target, as CI affords: the long runs (10 million inputs each) are
//! in docs/fuzzing.md with their commands.

fn short(target: berth_fuzz::Target, runs: u64) {
    // A new seed each CI run searches new ground; the seed is printed to replay a failure.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs());
    let report = berth_fuzz::fuzz(target, runs, seed, |_| {});
    if let Some((input, why)) = report.failure {
        panic!(
            "{} failed with seed {seed} after {} runs: {why}\ninput: {:?}",
            target.name(),
            report.runs,
            String::from_utf8_lossy(&input)
        );
    }
    assert_eq!(report.runs, runs);
    // Mutants that never parse would test only the first check of each parser.
    assert!(report.accepted * 50 > runs, "{}: only {} of {runs} inputs were accepted", target.name(), report.accepted);
}

#[test]
fn spec() {
    short(berth_fuzz::Target::Spec, 2_000);
}

#[test]
fn api() {
    short(berth_fuzz::Target::Api, 5_000);
}

#[test]
fn http1() {
    short(berth_fuzz::Target::Http1, 100_000);
}

#[test]
fn lua() {
    short(berth_fuzz::Target::Lua, 5_000);
}

#[test]
fn a_failure_is_caught_and_kept() {
    // The engine itself: a target that panics on some input is stopped, with that input.
    let report = berth_fuzz::fuzz_with(1_000, 7, |data| {
        assert!(!data.contains(&b'!'), "found a bang");
        Ok(true)
    });
    let (input, why) = report.failure.expect("the panic is caught");
    assert!(input.contains(&b'!') && why.contains("found a bang"), "{why}");
}
