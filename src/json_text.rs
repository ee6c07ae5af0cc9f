//! [`JsonText`]: a JSON string kept as the client encoded it, and the unescaping that turns
//! it into text where an adapter needs the text itself.

use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON string kept as the client encoded it (quotes and escapes included).
///
/// A prompt is read far more often than it is changed: forwarded to an OpenAI-dialect
/// upstream it is copied byte for byte instead of unescaped at parse and escaped again at
/// serialisation (the bulk of the JSON cost of a long prompt). [`as_str`](Self::as_str) gives
/// the text where an adapter needs it.
#[derive(Clone)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// Takes a raw JSON value that must be a string. serde_json has checked its syntax but,
    /// when skipping, not what its `\u` escapes decode to; a lone surrogate is refused here,
    /// as a parse into a `String` would.
    pub fn from_raw(raw: Box<RawValue>) -> Result<JsonText, &'static str> {
        let text = raw.get();
        if text.len() < 2 || !text.starts_with('"') || !text.ends_with('"') {
            return Err("expected a JSON string");
        }
        let inner = &text[1..text.len() - 1];
        // Only a `\\u` escape can fail to decode once serde_json has checked the syntax.
        if memchr::memmem::find(inner.as_bytes(), b"\\u").is_some() && walk(inner, |_| ()).is_none()
        {
            return Err("lone surrogate in a \\u escape");
        }
        Ok(JsonText(raw))
    }

    /// The text, unescaped (borrowed when it has no escapes).
    pub fn as_str(&self) -> Cow<'_, str> {
        let inner = self.inner();
        if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
            return Cow::Borrowed(inner);
        }
        // Checked when it was made, so the fallbacks are not reached.
        Cow::Owned(
            unescape(inner)
                .or_else(|| serde_json::from_str(self.0.get()).ok())
                .unwrap_or_default(),
        )
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.inner().is_empty()
    }

    /// The text's length in UTF-8 bytes (what `as_str().len()` gives), counted over the
    /// escapes without unescaping. Prompt-size estimates use it: the encoded length would
    /// count a `\u00e9` as six bytes, and a client that escapes all non-ASCII text would see
    /// its prompts estimated two to three times too large.
    pub fn text_len(&self) -> usize {
        let mut len = 0;
        let decoded = walk(self.inner(), |piece| {
            len += match piece {
                Piece::Run(run) => run.len(),
                Piece::Char(c) => c.len_utf8(),
            }
        });
        // Checked when it was made; the encoded length is the fallback.
        decoded.map_or(self.inner().len(), |()| len)
    }

    /// The JSON string literal, quotes included.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    fn inner(&self) -> &str {
        let raw = self.0.get();
        &raw[1..raw.len() - 1]
    }
}

impl From<&str> for JsonText {
    fn from(text: &str) -> Self {
        // Serialising a `&str` cannot fail and gives one JSON string.
        match serde_json::value::to_raw_value(text) {
            Ok(raw) => JsonText(raw),
            Err(_) => unreachable!("a string always serialises"),
        }
    }
}

impl From<String> for JsonText {
    fn from(text: String) -> Self {
        JsonText::from(text.as_str())
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.as_str(), f)
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // serde_json writes a raw value verbatim (and `to_value` parses it into a string).
        self.0.serialize(s)
    }
}

/// A piece of a JSON string's inside, in order: a run of text between escapes, or the
/// character one escape stands for.
enum Piece<'a> {
    Run(&'a str),
    Char(char),
}

/// Walks the inside of a JSON string literal, runs between backslashes found with `memchr`
/// and escapes decoded one by one. `None` for an escape a parse into a `String` refuses (a
/// lone surrogate, an unknown escape); unescaping, measuring and checking all use this walk.
fn walk<'a>(inner: &'a str, mut visit: impl FnMut(Piece<'a>)) -> Option<()> {
    let mut rest = inner;
    while let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) {
        visit(Piece::Run(&rest[..at]));
        // Every slice below starts after an ASCII byte, so it is on a character boundary.
        let after = &rest[at + 1..];
        let (decoded, used) = match after.as_bytes().first()? {
            b'"' => ('"', 1),
            b'\\' => ('\\', 1),
            b'/' => ('/', 1),
            b'b' => ('\u{8}', 1),
            b'f' => ('\u{c}', 1),
            b'n' => ('\n', 1),
            b'r' => ('\r', 1),
            b't' => ('\t', 1),
            b'u' => {
                let unit = hex4(&after[1..])?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = after[5..].strip_prefix("\\u").and_then(hex4)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        let c = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?;
                        (c, 11)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => (char::from_u32(unit)?, 5),
                }
            }
            _ => return None,
        };
        visit(Piece::Char(decoded));
        rest = &after[used..];
    }
    visit(Piece::Run(rest));
    Some(())
}

/// The text of the inside of a JSON string literal whose syntax is valid, or `None` for an
/// escape it cannot decode (a lone surrogate, or anything serde_json would have refused).
pub fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    walk(inner, |piece| match piece {
        Piece::Run(run) => out.push_str(run),
        Piece::Char(c) => out.push(c),
    })?;
    Some(out)
}

/// Four hex digits at the start of `s`.
fn hex4(s: &str) -> Option<u32> {
    let digits = s.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn plain_text_is_borrowed_and_escaped_text_decoded() {
        let t = JsonText::from("plain text");
        assert!(matches!(t.as_str(), Cow::Borrowed("plain text")));
        assert_eq!(t.json(), r#""plain text""#);
        assert_eq!(t.text_len(), 10);
        let t = JsonText::from("line\n\"two\"");
        assert!(matches!(t.as_str(), Cow::Owned(_)));
        assert_eq!(t.as_str(), "line\n\"two\"");
        assert_eq!(t.json(), r#""line\n\"two\"""#);
        assert!(JsonText::from("").is_empty());
        assert_eq!(format!("{:?}", JsonText::from("a\"b")), r#""a\"b""#);
    }

    #[test]
    fn every_escape_decodes_as_serde_json_does() {
        let json = r#""q\" b\\ s\/ \b\f\n\r\t \u00e9 \u20AC \ud83d\ude00 \u0000 end""#;
        let t = JsonText::from_raw(raw(json)).unwrap();
        let want: String = serde_json::from_str(json).unwrap();
        assert_eq!(t.as_str(), want);
        assert_eq!(t.json(), json, "kept as sent");
    }

    #[test]
    fn lone_surrogates_are_refused_when_taken() {
        for json in [
            r#""\ud83d""#,
            r#""\ud83d x""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
        ] {
            assert!(serde_json::from_str::<String>(json).is_err(), "{json}");
            assert!(JsonText::from_raw(raw(json)).is_err(), "{json}");
        }
        // An escaped backslash before `u` is not an escape.
        let t = JsonText::from_raw(raw(r#""\\ud83d""#)).unwrap();
        assert_eq!(t.as_str(), "\\ud83d");
        assert!(JsonText::from_raw(raw("5")).is_err());
    }

    #[test]
    fn malformed_escapes_are_refused_not_panicked_on() {
        // `unescape` is public: input serde_json never produces must not split a character.
        for inner in ["\\é", "a\\", "\\u12", "\\uD83D\\u00é1", "\\uD83D", "\\x"] {
            assert_eq!(unescape(inner), None, "{inner}");
        }
    }

    #[test]
    fn text_len_counts_the_text_not_its_escapes() {
        for json in [
            r#""plain""#,
            r#""""#,
            r#""caf\u00e9 \u20ac \ud83d\ude00 \u0041""#,
            r#""\"q\" \\ \n\t end\\""#,
            r#""\\u00e9""#,
        ] {
            let t = JsonText::from_raw(raw(json)).unwrap();
            assert_eq!(t.text_len(), t.as_str().len(), "{json}");
        }
    }

    proptest! {
        #[test]
        fn text_len_is_the_unescaped_length(text in any::<String>(), ascii_only in any::<bool>()) {
            // Both encodings clients send: raw UTF-8, and every non-ASCII character escaped.
            let mut json = serde_json::to_string(&text).unwrap();
            if ascii_only {
                json = json
                    .chars()
                    .map(|c| match c.is_ascii() {
                        true => c.to_string(),
                        false => c
                            .encode_utf16(&mut [0; 2])
                            .iter()
                            .map(|u| format!("\\u{u:04x}"))
                            .collect(),
                    })
                    .collect();
            }
            let t = JsonText::from_raw(raw(&json)).unwrap();
            prop_assert_eq!(t.as_str(), text.as_str());
            prop_assert_eq!(t.text_len(), text.len());
        }
    }

    proptest! {
        #[test]
        fn unescape_inverts_serde_json_escaping(text in any::<String>()) {
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(unescape(&json[1..json.len() - 1]), Some(text));
        }

        #[test]
        fn unescape_agrees_with_serde_json_on_any_escapes(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just("\\\"".to_owned()), Just("\\\\".to_owned()), Just("\\/".to_owned()),
                    Just("\\n".to_owned()), Just("\\t".to_owned()), Just("\\b".to_owned()),
                    Just("\\x".to_owned()), Just("\\u12".to_owned()),
                    (0u32..0x10000).prop_map(|u| format!("\\u{u:04x}")),
                    (0xD800u32..0xE000).prop_map(|u| format!("\\u{u:04X}")),
                    "[a-z é€😀]{0,3}",
                ],
                0..12,
            )
        ) {
            let inner = pieces.concat();
            let json = format!("\"{inner}\"");
            let serde: Option<String> = serde_json::from_str(&json).ok();
            prop_assert_eq!(unescape(&inner), serde);
        }
    }
}
