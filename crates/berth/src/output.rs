//! How results are shown: a table for people, JSON for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// How a command shows its result: for people, or for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// `-o`: a table, a wider table, JSON, or YAML. YAML is JSON's data in YAML's syntax (streams
/// stay JSON lines); `wide` adds the columns a narrow terminal leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

static YAML: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static WIDE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Output {
    /// The format commands use; YAML and wide are remembered for [`json`] and [`wide`].
    pub fn apply(self) -> Format {
        YAML.store(self == Output::Yaml, std::sync::atomic::Ordering::Relaxed);
        WIDE.store(self == Output::Wide, std::sync::atomic::Ordering::Relaxed);
        match self {
            Output::Table | Output::Wide => Format::Table,
            Output::Json | Output::Yaml => Format::Json,
        }
    }
}

/// Whether `-o wide` was asked for.
pub fn wide() -> bool {
    WIDE.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING).set_content_arrangement(ContentArrangement::Dynamic).set_header(headers.to_vec());
    for row in rows {
        t.add_row(row);
    }
    t.to_string()
}

/// An app's own text made safe for a terminal: control characters (escape sequences, carriage
/// returns, the C1 range) are shown as `\x1b`-style escapes instead of acting on the screen.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| (c.is_control() && c != '\t') || c == '\u{7f}';
    if !text.chars().any(control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !control(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A result for scripts: pretty JSON, or YAML under `-o yaml`.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    if YAML.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(serde_saphyr::to_string(value)?.trim_end().to_string());
    }
    Ok(serde_json::to_string_pretty(value)?)
}

/// `12s ago`, `3m ago`, for timestamps in milliseconds.
pub fn ago(then_ms: i64) -> String {
    berth_core::ago(then_ms, berth_server::now_ms())
}

/// Local time with milliseconds, for log lines.
pub fn clock_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(super::visible("plain\ttext é"), "plain\ttext é");
        assert_eq!(super::visible("\x1b[2J\x1b]0;pwned\x07ok\r\u{9b}"), "\\x1b[2J\\x1b]0;pwned\\x07ok\\x0d\\x9b");
    }
}
