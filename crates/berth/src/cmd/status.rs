//! An app's status as a table, shown by `app NAME status` and at the end of `deploy`.

use berth_api::AppStatus;

use crate::output::{self, ago, table};

/// Ended instances `status` shows under the live ones.
const ENDED_SHOWN: usize = 3;

pub fn status_table(s: &AppStatus) -> String {
    let mut out = format!(
        "{} v{}  {}  {}/{} running{}{}\n",
        s.id,
        s.version,
        s.image.as_deref().unwrap_or("(exec)"),
        s.counts.running,
        s.desired,
        match s.counts.unknown {
            0 => String::new(),
            n => format!(", {n} unknown on disconnected nodes"),
        },
        s.pending.as_ref().map(|p| format!("\npending: {p}")).unwrap_or_default()
    );
    if let Some(d) = &s.deployment {
        let from = d.from_version.filter(|f| *f != d.version).map(|f| format!("v{f} -> ")).unwrap_or_default();
        let mut line = format!("deployment: {} {from}v{} {}", d.kind.as_str(), d.version, d.state);
        if let Some(n) = d.canary {
            line.push_str(&format!(" (canary of {n}, waiting for promote)"));
        }
        if d.failures > 0 {
            line.push_str(&format!(", {} failure(s)", d.failures));
        }
        match &d.message {
            Some(m) => line.push_str(&format!(": {m}, {}", ago(d.finished_at.unwrap_or(d.started_at)))),
            None => line.push_str(&format!(", started {}", ago(d.started_at))),
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(c) = &s.crash_loop {
        let wait = (c.next_launch_at - berth_server::now_ms()).max(0) as f64 / 1000.0;
        out.push_str(&format!(
            "crash loop: {} failures in a row; last {}: {}; next launch in {wait:.1}s\n",
            c.failures,
            c.instance.as_deref().unwrap_or("-"),
            c.reason.as_deref().unwrap_or("failed"),
        ));
        for line in &c.last_log {
            out.push_str(&format!("  | {}\n", output::visible(line)));
        }
    }
    // The live ones first; of those that ended, the latest few (`-o json` has them all).
    let mut shown: Vec<&berth_api::InstanceView> = s.instances.iter().filter(|v| v.instance.state.is_live()).collect();
    let mut ended: Vec<&berth_api::InstanceView> =
        s.instances.iter().filter(|v| v.instance.state.is_terminal()).collect();
    ended.sort_by_key(|v| std::cmp::Reverse(v.instance.observed.finished_at.unwrap_or(v.instance.created_at)));
    let older = ended.len().saturating_sub(ENDED_SHOWN);
    shown.extend(ended.into_iter().take(ENDED_SHOWN));
    let rows = shown
        .into_iter()
        .map(|v| {
            let i = &v.instance;
            let mut state = i.state.to_string();
            if v.unreachable {
                // Its node is disconnected: what it does now is unknown.
                state = format!("unknown (last {})", i.state);
            }
            if i.state.is_live() && i.desired == berth_core::Desired::Stop {
                state.push_str(" (stopping)");
            }
            if i.observed.healthy == Some(false) {
                state.push_str(" (unhealthy)");
            } else if i.is_up() && !i.in_service {
                state.push_str(" (warming)");
            }
            // Placed in the shared pool because its group's pools were full.
            if i.borrowed && i.state.is_live() {
                state.push_str(" (borrowed)");
            }
            let mut row = vec![
                i.id.clone(),
                state,
                format!("v{}", i.version),
                i.node.clone(),
                v.address.clone().unwrap_or_else(|| "-".into()),
                ago(i.observed.started_at.unwrap_or(i.created_at)),
                // Why it ended, or while it starts or is unhealthy, why its check fails.
                output::visible(i.observed.reason.as_deref().unwrap_or_default()).into_owned(),
            ];
            if output::wide() {
                row.push(i.driver.to_string());
                row.push(i.observed.handle.clone().unwrap_or_else(|| "-".into()));
                row.push(i.host_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","));
                row.push(ago(i.created_at));
            }
            row
        })
        .collect();
    let mut headers = vec!["INSTANCE", "STATE", "VERSION", "NODE", "ADDRESS", "SINCE", "REASON"];
    if output::wide() {
        headers.extend(["DRIVER", "HANDLE", "HOST PORTS", "CREATED"]);
    }
    out.push_str(&table(&headers, rows));
    if older > 0 {
        out.push_str(&format!("\n({older} older ended instance(s) not shown; -o json lists them)"));
    }
    out
}
