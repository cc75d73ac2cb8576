//! Where the platform sends what it has to say, in one shape for specs, flags and docs: log
//! lines (`syslog+tcp://HOST:PORT`, `syslog+udp://HOST:PORT` in RFC 5424, or `http://HOST/PATH`
//! as batches of JSON lines for Loki, Elasticsearch or Vector) and alert notices
//! (`http://HOST/PATH` as one JSON alert per POST, or `alertmanager+http://HOST:PORT`, Prometheus
//! Alertmanager's v2 API). `webhook+http://` names a webhook wherever it is written.

use std::fmt;

/// One output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// Log lines, RFC 5424, over TCP (octet counting) or UDP.
    Syslog { addr: String, udp: bool },
    /// Log lines as batches of JSON lines.
    Http { url: String },
    /// Alert notices, one JSON alert per POST.
    Webhook { url: String },
    /// Alert notices through Alertmanager's v2 API at this base URL.
    Alertmanager { url: String },
}

/// What an output carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    Logs,
    Alerts,
}

impl Output {
    /// Reads an output where `what` is sent: a plain `http://` URL is a log sink among log
    /// outputs and a webhook among alert outputs.
    pub fn parse(text: &str, what: Carries) -> Result<Output, String> {
        let hint = match what {
            Carries::Logs => "expected syslog+tcp://HOST:PORT, syslog+udp://HOST:PORT or http://HOST[:PORT]/PATH",
            Carries::Alerts => "expected http://HOST[:PORT]/PATH (a webhook) or alertmanager+http://HOST:PORT",
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| format!("`{text}`: {hint}"))?;
        let host_port = |rest: &str| -> Result<String, String> {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("`{text}`: the port is missing"))?;
            let port: u16 = port.parse().map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
            if host.is_empty() || port == 0 {
                return Err(format!("`{text}`: {hint}"));
            }
            Ok(format!("{host}:{port}"))
        };
        let http_url = |url: &str| -> Result<String, String> {
            match url.strip_prefix("http://") {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(url.to_string()),
                _ => Err(format!("`{text}`: {hint}")),
            }
        };
        let output = match scheme {
            "syslog+tcp" | "syslog" => Output::Syslog { addr: host_port(rest.trim_end_matches('/'))?, udp: false },
            "syslog+udp" => Output::Syslog { addr: host_port(rest.trim_end_matches('/'))?, udp: true },
            "http" if what == Carries::Logs => Output::Http { url: http_url(text)? },
            "http" => Output::Webhook { url: http_url(text)? },
            "webhook+http" => Output::Webhook { url: http_url(&text["webhook+".len()..])? },
            "alertmanager+http" => {
                let url = http_url(&text["alertmanager+".len()..])?;
                Output::Alertmanager { url: url.trim_end_matches('/').to_string() }
            }
            "https" | "webhook+https" | "alertmanager+https" => {
                return Err(format!("`{text}`: https is not supported; send to a local forwarder over http"));
            }
            _ => return Err(format!("`{text}`: {hint}")),
        };
        if output.carries() != what {
            let (carries, wanted) = match what {
                Carries::Logs => ("alert notices", "log lines"),
                Carries::Alerts => ("log lines", "alert notices"),
            };
            return Err(format!("`{text}` takes {carries}, not {wanted}: {hint}"));
        }
        Ok(output)
    }

    /// A log output, for `--log-sink`.
    pub fn parse_logs(text: &str) -> Result<Output, String> {
        Output::parse(text, Carries::Logs)
    }

    /// An alert output, for `--alert-webhook`.
    pub fn parse_alerts(text: &str) -> Result<Output, String> {
        Output::parse(text, Carries::Alerts)
    }

    pub fn carries(&self) -> Carries {
        match self {
            Output::Syslog { .. } | Output::Http { .. } => Carries::Logs,
            Output::Webhook { .. } | Output::Alertmanager { .. } => Carries::Alerts,
        }
    }

    /// The `host:port` the output sends to, for its health check.
    pub fn address(&self) -> Option<String> {
        match self {
            Output::Syslog { addr, .. } => Some(addr.clone()),
            Output::Http { url } | Output::Webhook { url } | Output::Alertmanager { url } => {
                let rest = url.strip_prefix("http://")?;
                let authority = rest.split('/').next()?;
                Some(if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") })
            }
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Syslog { addr, udp: false } => write!(f, "syslog+tcp://{addr}"),
            Output::Syslog { addr, udp: true } => write!(f, "syslog+udp://{addr}"),
            Output::Http { url } | Output::Webhook { url } => f.write_str(url),
            Output::Alertmanager { url } => write!(f, "alertmanager+{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_and_print_back() {
        for text in ["syslog+tcp://127.0.0.1:514", "syslog+udp://logs.local:5514", "http://127.0.0.1:3100/loki"] {
            assert_eq!(Output::parse_logs(text).unwrap().to_string(), text);
        }
        for text in ["http://chat.local/hooks/berth", "alertmanager+http://127.0.0.1:9093"] {
            assert_eq!(Output::parse_alerts(text).unwrap().to_string(), text);
        }
        assert_eq!(Output::parse_alerts("webhook+http://h/x").unwrap(), Output::Webhook { url: "http://h/x".into() });
        assert!(Output::parse_logs("syslog+tcp://host").unwrap_err().contains("port is missing"));
        assert!(Output::parse_logs("https://x/y").unwrap_err().contains("not supported"));
        assert!(Output::parse_logs("ftp://x").is_err());
    }

    #[test]
    fn an_output_takes_only_what_it_can_carry() {
        let err = Output::parse_logs("alertmanager+http://127.0.0.1:9093").unwrap_err();
        assert!(err.contains("takes alert notices, not log lines"), "{err}");
        let err = Output::parse_alerts("syslog+udp://h:514").unwrap_err();
        assert!(err.contains("takes log lines, not alert notices"), "{err}");
    }

    #[test]
    fn an_output_knows_where_its_health_check_connects() {
        let address = |text: &str, what| Output::parse(text, what).unwrap().address().unwrap();
        assert_eq!(address("syslog+tcp://h:514", Carries::Logs), "h:514");
        assert_eq!(address("http://h:3100/loki", Carries::Logs), "h:3100");
        assert_eq!(address("http://chat.local/hooks", Carries::Alerts), "chat.local:80");
    }
}
