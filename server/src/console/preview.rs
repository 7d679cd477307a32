//! How the console shows a payload or an output it knows nothing about: JSON pretty-printed,
//! other UTF-8 as text, anything else as a hex dump; each cut to a bound with a note of the
//! full size. The page's template escapes what this returns.

use std::fmt::Write as _;

/// Characters of text (or JSON) shown at most.
pub const TEXT_LIMIT: usize = 16 * 1024;
/// Bytes of binary shown at most, as hex.
pub const HEX_LIMIT: usize = 1024;
/// Largest value parsed as JSON; a larger one is shown as text (parsing it costs too much for a
/// preview).
const JSON_PARSE_LIMIT: usize = 1024 * 1024;

/// What a value looks like, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preview {
    Empty,
    /// Pretty-printed JSON.
    Json(Shown),
    Text(Shown),
    /// A hex dump: offset, bytes, and their printable ASCII.
    Hex(Shown),
}

/// Text to show, and whether it is cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub text: String,
    /// Set when `text` is only the start: the full size, in bytes of the value.
    pub full_bytes: Option<usize>,
}

impl Preview {
    pub fn label(&self) -> &'static str {
        match self {
            Preview::Empty => "empty",
            Preview::Json(_) => "JSON",
            Preview::Text(_) => "text",
            Preview::Hex(_) => "binary (hex)",
        }
    }

    pub fn shown(&self) -> Option<&Shown> {
        match self {
            Preview::Empty => None,
            Preview::Json(s) | Preview::Text(s) | Preview::Hex(s) => Some(s),
        }
    }
}

/// The preview of `bytes`.
pub fn preview(bytes: &[u8]) -> Preview {
    if bytes.is_empty() {
        return Preview::Empty;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Preview::Hex(hex(bytes));
    };
    if bytes.len() <= JSON_PARSE_LIMIT
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
        && let Ok(pretty) = serde_json::to_string_pretty(&value)
    {
        let cut = cut(&pretty, TEXT_LIMIT);
        return Preview::Json(Shown {
            text: cut.to_owned(),
            full_bytes: (cut.len() < pretty.len()).then_some(bytes.len()),
        });
    }
    let cut = cut(text, TEXT_LIMIT);
    Preview::Text(Shown {
        text: cut.to_owned(),
        full_bytes: (cut.len() < text.len()).then_some(bytes.len()),
    })
}

/// The start of `text`, at most `limit` characters.
fn cut(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// `00000000  de ad be ef …  |....|`, 16 bytes a line, of the first [`HEX_LIMIT`] bytes.
fn hex(bytes: &[u8]) -> Shown {
    let shown = &bytes[..bytes.len().min(HEX_LIMIT)];
    let mut text = String::with_capacity(shown.len() * 4 + 16);
    for (n, line) in shown.chunks(16).enumerate() {
        let _ = write!(text, "{:08x} ", n * 16);
        for i in 0..16 {
            match line.get(i) {
                Some(b) => {
                    let _ = write!(text, " {b:02x}");
                }
                None => text.push_str("   "),
            }
        }
        text.push_str("  |");
        text.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        text.push_str("|\n");
    }
    Shown {
        text,
        full_bytes: (shown.len() < bytes.len()).then_some(bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_pretty_printed_in_its_own_order() {
        let p = preview(br#"{"b":1,"a":[true,null]}"#);
        assert_eq!(p.label(), "JSON");
        assert_eq!(
            p.shown().map(|s| s.text.as_str()),
            Some("{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null\n  ]\n}")
        );
        assert_eq!(p.shown().and_then(|s| s.full_bytes), None);
    }

    #[test]
    fn text_stays_text_and_markup_is_left_for_the_template_to_escape() {
        let p = preview(b"<script>window.pwned=1</script> hello");
        assert_eq!(
            p,
            Preview::Text(Shown {
                text: "<script>window.pwned=1</script> hello".into(),
                full_bytes: None
            })
        );
        assert_eq!(preview(b""), Preview::Empty);
    }

    #[test]
    fn binary_is_a_hex_dump() {
        let p = preview(&[0xde, 0xad, b'A', 0xff]);
        assert_eq!(p.label(), "binary (hex)");
        let text = &p.shown().expect("shown").text;
        assert!(text.starts_with("00000000  de ad 41 ff "), "{text}");
        assert!(text.ends_with("|..A.|\n"), "{text}");
    }

    #[test]
    fn large_values_are_cut_with_their_full_size() {
        // Multi-byte characters: the cut falls on a character boundary.
        let text = "é".repeat(TEXT_LIMIT + 10);
        let p = preview(text.as_bytes());
        let shown = p.shown().expect("shown");
        assert_eq!(shown.text.chars().count(), TEXT_LIMIT);
        assert_eq!(shown.full_bytes, Some(text.len()));

        let binary = vec![0xffu8; HEX_LIMIT * 3];
        let shown = preview(&binary).shown().cloned().expect("shown");
        assert_eq!(shown.text.lines().count(), HEX_LIMIT / 16);
        assert_eq!(shown.full_bytes, Some(HEX_LIMIT * 3));

        let json = format!("[{}1]", "1,".repeat(TEXT_LIMIT));
        let p = preview(json.as_bytes());
        assert_eq!(p.label(), "JSON");
        assert_eq!(p.shown().and_then(|s| s.full_bytes), Some(json.len()));
    }
}
