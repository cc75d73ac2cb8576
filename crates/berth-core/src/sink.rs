//! Where logs can be forwarded: `syslog+tcp://HOST:PORT`, `syslog+udp://HOST:PORT` (RFC 5424), or
//! `http://HOST[:PORT]/PATH` (batches of JSON lines, for Loki, Elasticsearch or Vector).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogSink {
    Syslog { addr: String, udp: bool },
    Http { url: String },
}

impl LogSink {
    pub fn parse(text: &str) -> Result<LogSink, String> {
        let hint = "expected syslog+tcp://HOST:PORT, syslog+udp://HOST:PORT or http://HOST[:PORT]/PATH";
        let (scheme, rest) = text.split_once("://").ok_or_else(|| format!("`{text}`: {hint}"))?;
        let host_port = |rest: &str| -> Result<String, String> {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("`{text}`: the port is missing"))?;
            let port: u16 = port.parse().map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
            if host.is_empty() || port == 0 {
                return Err(format!("`{text}`: {hint}"));
            }
            Ok(format!("{host}:{port}"))
        };
        match scheme {
            "syslog+tcp" | "syslog" => Ok(LogSink::Syslog { addr: host_port(rest.trim_end_matches('/'))?, udp: false }),
            "syslog+udp" => Ok(LogSink::Syslog { addr: host_port(rest.trim_end_matches('/'))?, udp: true }),
            "http" if !rest.is_empty() && !rest.starts_with('/') => Ok(LogSink::Http { url: text.to_string() }),
            "https" => Err(format!("`{text}`: https sinks are not supported; send to a local forwarder over http")),
            _ => Err(format!("`{text}`: {hint}")),
        }
    }
}

impl fmt::Display for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogSink::Syslog { addr, udp: false } => write!(f, "syslog+tcp://{addr}"),
            LogSink::Syslog { addr, udp: true } => write!(f, "syslog+udp://{addr}"),
            LogSink::Http { url } => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse_and_print_back() {
        for text in ["syslog+tcp://127.0.0.1:514", "syslog+udp://logs.local:5514", "http://127.0.0.1:3100/loki"] {
            assert_eq!(LogSink::parse(text).unwrap().to_string(), text);
        }
        assert!(LogSink::parse("syslog+tcp://host").unwrap_err().contains("port is missing"));
        assert!(LogSink::parse("https://x/y").unwrap_err().contains("not supported"));
        assert!(LogSink::parse("ftp://x").is_err());
    }
}
