//! Forwarding: a prepared request goes to a cluster's servers in turn until one answers, with
//! retries bounded in number and time.

use super::*;

pub(super) fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE")
}

impl Proxy {
    /// Sends a prepared request to the cluster's servers in turn until one answers.
    /// A body too large to hold comes from `pump`: only a failed connection, which sent nothing,
    /// is tried again.
    pub async fn forward<'p>(
        &self,
        pool: &Pool,
        plan: &Forwarding,
        request: upstream::Request<'_>,
        mut pump: Option<&mut (dyn BodyPump + 'p)>,
        started: Instant,
        mut log: Option<&mut Log>,
    ) -> Result<Forwarded, Local> {
        let idempotent = request.resend;
        let cluster = &plan.cluster;
        let mut tried = [usize::MAX; MAX_TRIES];
        let mut tries = 0;
        let max_tries = MAX_TRIES.min(cluster.servers.len()).max(1);
        let mut last_error: Option<String> = None;
        while let Some(pick) = balance::pick(cluster, &tried[..tries], plan.key.as_deref()) {
            tried[tries] = pick.index;
            tries += 1;
            let server = &cluster.servers[pick.index];
            if let Some(l) = log.as_deref_mut() {
                l.upstream = Some(server.addr.clone());
                l.tries = tries;
            }
            if pick.fail_open {
                cluster.metrics.fail_open.fetch_add(1, Ordering::Relaxed);
            }
            let guard = InFlight::new(server.state.clone(), cluster.metrics.clone());
            match pool.exchange(&server.addr, request, pump.as_deref_mut()).await {
                Ok(response) => {
                    server.state.record_success();
                    let status = response.head.status;
                    cluster.metrics.observe(status, started.elapsed());
                    return Ok(Forwarded { response, guard });
                }
                Err(upstream::ExchangeError { client: Some(status), message, .. }) => {
                    // The client's fault, not the server's.
                    cluster.metrics.observe(status, started.elapsed());
                    return Err(Local::json(status, serde_json::json!({"error": message})));
                }
                Err(e) if e.timeout && !e.connect => {
                    let why = format!("{}: {}", server.addr, e.message);
                    server.state.record_failure(&why);
                    cluster.metrics.observe(504, started.elapsed());
                    return Err(Local::json(504, serde_json::json!({"error": why})));
                }
                Err(e) => {
                    let why = format!("{}: {}", server.addr, e.message);
                    server.state.record_failure(&why);
                    last_error = Some(why);
                    drop(guard);
                    let may_retry = (e.connect || idempotent) && tries < max_tries && started.elapsed() < RETRY_BUDGET;
                    if may_retry {
                        cluster.metrics.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    break;
                }
            }
        }
        cluster.metrics.observe(502, started.elapsed());
        if let Some(l) = log {
            l.upstream = None;
        }
        let why = last_error.unwrap_or_else(|| "no server is available".into());
        Err(Local::json(502, serde_json::json!({"error": why, "cluster": cluster.name})))
    }
}
