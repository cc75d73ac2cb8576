//! `cargo bench -p berth-router --bench rules`: what one rule costs per request, warm and with the
//! caches cold (as under load, when other processes run between two requests): the rule as the
//! router runs it (natively, since it is a simple one), the same rule in the Lua VM, and beside
//! them the floor of calling an empty Lua function from Rust through mlua, in the same run.
//!
//! `BERTH_BENCH_CALLS` (default 20000) calls per measurement.

use std::time::{Duration, Instant};

use berth_rules::{RequestView, Script, run, run_in_vm};

/// The rule `cargo bench -p berth --bench router` puts on the path, and one with patterns.
const RULES: [(&str, &str); 2] = [
    (
        "deny DELETE, set a header",
        "if req.method == \"DELETE\" then return deny(403, \"no deletes here\") end\nset_header(\"X-Checked\", \"1\")\n",
    ),
    (
        "patterns: admin prefix, user id",
        "if req.path:find(\"^/admin\") then return deny(403) end\n\
         local id = req.path:match(\"^/users/(%d+)\")\nif id then set_header(\"X-User\", id) end\n",
    ),
];

/// Time per call of `call`, with `evict` bytes of other memory written between two calls.
fn per_call(calls: usize, evict: usize, junk: &mut [u8], mut call: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    for i in 0..calls {
        for b in junk[..evict].iter_mut().step_by(64) {
            *b = b.wrapping_add(i as u8);
        }
        let t = Instant::now();
        call();
        spent += t.elapsed();
    }
    spent / calls as u32
}

fn main() {
    let calls = std::env::var("BERTH_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let view = RequestView {
        method: "GET",
        path: "/users/1234/orders",
        query: "",
        host: "bench.test",
        remote: Some([127, 0, 0, 1].into()),
        headers: &[],
    };
    let lua = mlua::Lua::new();
    let empty: mlua::Function = lua.load("return function() end").eval().expect("an empty function");
    let mut junk = vec![0u8; 8 << 20];
    println!("\n## one rule per request ({calls} calls per row, path {})\n", view.path);
    println!(
        "| rule | other memory written between calls | native (ns) | same rule in the VM (ns) | empty Lua call (ns) | native / VM |"
    );
    println!("|---|---|---|---|---|---|");
    for ((name, source), evict) in RULES.iter().flat_map(|r| [0usize, 256 << 10, 1 << 20, 8 << 20].map(|e| (r, e))) {
        let script = Script::new(source).expect("the bench rule compiles");
        assert_eq!(script.engine(), "native", "{name} runs natively");
        assert_eq!(run(&script, &view), run_in_vm(&script, &view), "{name}: both engines decide alike");
        for _ in 0..1000 {
            run(&script, &view).expect("the rule runs");
            run_in_vm(&script, &view).expect("the rule runs");
        }
        let native = per_call(calls, evict, &mut junk, || {
            std::hint::black_box(run(&script, &view).expect("the rule runs"));
        });
        let vm = per_call(calls, evict, &mut junk, || {
            std::hint::black_box(run_in_vm(&script, &view).expect("the rule runs"));
        });
        let floor = per_call(calls, evict, &mut junk, || {
            empty.call::<()>(()).expect("the empty call");
        });
        println!(
            "| {name} | {} KiB | {} | {} | {} | {:.2} |",
            evict >> 10,
            native.as_nanos(),
            vm.as_nanos(),
            floor.as_nanos(),
            native.as_secs_f64() / vm.as_secs_f64()
        );
    }
    std::hint::black_box(&junk);
}
