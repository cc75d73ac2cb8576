//! What a header may hold, as HTTP/1.1 (RFC 9110) allows: a rule may set no other.

/// A field name as HTTP allows one: one or more token characters.
pub fn is_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
}

/// A field value a header may carry as it is: visible ASCII, spaces and tabs.
pub fn is_value(value: &[u8]) -> bool {
    value.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c))
}
