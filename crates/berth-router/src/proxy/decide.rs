//! Routing: the request's Host picks a cluster, the cluster's rules may answer, rewrite or
//! send it elsewhere, and a hashing cluster gets the request's key.

use super::*;

/// The request's host as routing keys it: lowercase, without port or trailing dot.
pub fn normalize_host(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let host = if text.starts_with('[') {
        // An IPv6 literal keeps its brackets; only a port after them goes.
        text.rsplit_once("]:").map_or(text, |(h, _)| &text[..h.len() + 1])
    } else {
        match text.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => text,
        }
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

pub(super) fn header_value<'a>(headers: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| *v)
}

/// The request's key for a hashing cluster: a header, a cookie, or the client's address.
pub(super) fn hash_key(cluster: &Cluster, headers: &[(&[u8], &[u8])], remote: SocketAddr) -> Option<String> {
    let Balance::Hash(on) = &cluster.balance else {
        return None;
    };
    match on {
        HashOn::Header(name) => {
            header_value(headers, name).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_string)
        }
        HashOn::Cookie(name) => headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .find_map(|line| {
                line.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            }),
        HashOn::ClientIp => Some(remote.ip().to_string()),
    }
}

impl Proxy {
    /// Routes a request: an answer of the router's own, or where to forward it.
    pub fn decide(&self, table: &Table, req: &RequestInfo<'_>, started: Instant, log: &mut Option<Log>) -> Decision {
        let Some(mut cluster) = table.lookup(req.host).cloned() else {
            return Decision::Local(Local::json(
                404,
                serde_json::json!({"error": "no route for this host", "host": req.host}),
            ));
        };
        if let Some(l) = log.as_mut() {
            l.cluster = Some(cluster.clone());
        }
        let mut rewrite = None;
        let mut set_headers = Vec::new();
        if let Some(loaded) = cluster.rules.clone() {
            let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
            let view = RequestView {
                method: req.method,
                path,
                query,
                host: req.host,
                remote: Some(req.remote.ip()),
                headers: req.headers,
            };
            match rules::run(&loaded.script, &view) {
                Err(e) => {
                    cluster.metrics.rule_failures[e.kind.index()].fetch_add(1, Ordering::Relaxed);
                    if loaded.script.report_due() {
                        tracing::warn!(cluster = %cluster.name, error = %e, kind = ?e.kind, on_error = loaded.on_error.as_str(),
                                       "request rule failed");
                    }
                    // Open: the request goes on as if there were no rule. Closed: refused, and
                    // the client learns nothing of the script's internals.
                    if loaded.on_error == berth_api::RuleOnError::Closed {
                        cluster.metrics.observe(500, started.elapsed());
                        return Decision::Local(Local::json(500, serde_json::json!({"error": "request rule failed"})));
                    }
                }
                Ok(outcome) => {
                    match outcome.action {
                        RuleAction::Pass => {}
                        RuleAction::Deny { status, message } => {
                            let status = if StatusCode::from_u16(status).is_ok() { status } else { 403 };
                            cluster.metrics.denied.fetch_add(1, Ordering::Relaxed);
                            cluster.metrics.observe(status, started.elapsed());
                            return Decision::Local(Local::json(status, serde_json::json!({"error": message})));
                        }
                        RuleAction::Redirect { url, status } => {
                            let status = if StatusCode::from_u16(status).is_ok() { status } else { 302 };
                            cluster.metrics.observe(status, started.elapsed());
                            let ok = HeaderValue::from_str(&url).is_ok();
                            let mut local = Local::json(status, serde_json::json!({"location": url}));
                            local.location = ok.then_some(url);
                            return Decision::Local(local);
                        }
                        RuleAction::Route(name) => match table.by_route_name(&name) {
                            Some(c) => cluster = c.clone(),
                            None => {
                                return Decision::Local(Local::json(
                                    502,
                                    serde_json::json!({"error": format!("a rule routed to `{name}`, which is not an upstream here")}),
                                ));
                            }
                        },
                    }
                    rewrite = outcome.rewrite;
                    // Only valid names and values reach the wire.
                    set_headers = outcome.set_headers;
                    set_headers.retain(|(k, v)| {
                        berth_rules::header::is_name(k.as_bytes()) && berth_rules::header::is_value(v.as_bytes())
                    });
                }
            }
        }
        let key = hash_key(&cluster, req.headers, req.remote);
        if let Some(l) = log.as_mut() {
            l.cluster = Some(cluster.clone());
        }
        Decision::Forward(Forwarding { cluster, rewrite, set_headers, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized_for_routing() {
        assert_eq!(normalize_host(b"Shop.Example.COM:8080").as_deref(), Some("shop.example.com"));
        assert_eq!(normalize_host(b"a.test.").as_deref(), Some("a.test"));
        assert_eq!(normalize_host(b"[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(b"").as_deref(), None);
    }
}
