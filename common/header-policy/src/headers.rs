//! The header map a policy edits ([`Headers`]), one implementation over a
//! plain list ([`HeaderList`]) and one over `http::HeaderMap`, and the
//! validity rules for names and values every implementation can rely on.

/// A header map as a policy sees it. Names handed to these methods are
/// lowercase valid tokens and values are valid field values (checked at load
/// or when rendered), so implementations need not validate again.
/// Implementations keep names lowercase (HTTP/2 and `http::HeaderMap` do).
pub trait Headers {
    /// Every value of `name`, in order.
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]>;
    /// Every field, in order, a repeated name once per value.
    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])>;
    /// Replaces every value of `name` with `value`.
    fn set(&mut self, name: &str, value: &[u8]);
    /// Adds `value` after the existing values of `name`.
    fn append(&mut self, name: &str, value: &[u8]);
    /// Removes every value of `name` (nothing if absent).
    fn remove(&mut self, name: &str);

    /// The first value of `name`.
    fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }
    /// Whether `name` has at least one value.
    fn contains(&self, name: &str) -> bool {
        self.get_all(name).next().is_some()
    }

    // The same with a policy's own names and fixed values, prepared at
    // load: a host whose map keys on `http::HeaderName` overrides these to
    // use the parsed forms and parse nothing per request.

    /// [`Headers::contains`] for a policy's name.
    fn contains_name(&self, name: &Name) -> bool {
        self.contains(name)
    }
    /// [`Headers::remove`] for a policy's name (only when present: for a
    /// host that pays per call, most names a strip list names are absent).
    fn remove_name(&mut self, name: &Name) {
        if self.contains(name) {
            self.remove(name)
        }
    }
    /// [`Headers::set`] for a policy's name.
    fn set_name(&mut self, name: &Name, value: &[u8]) {
        self.set(name, value)
    }
    /// [`Headers::append`] for a policy's name.
    fn append_name(&mut self, name: &Name, value: &[u8]) {
        self.append(name, value)
    }
    /// [`Headers::set`] for a policy's name and fixed value.
    fn set_value(&mut self, name: &Name, value: &Value) {
        self.set_name(name, value.as_bytes())
    }
    /// [`Headers::append`] for a policy's name and fixed value.
    fn append_value(&mut self, name: &Name, value: &Value) {
        self.append_name(name, value.as_bytes())
    }
}

/// A header name a policy names: lowercase and a token (checked at load),
/// and with the `http` feature also parsed once into the
/// `http::HeaderName` a host keyed on it uses. Reads as a `&str`.
#[derive(Clone, PartialEq, Eq)]
pub struct Name {
    text: String,
    #[cfg(feature = "http")]
    parsed: Option<http::HeaderName>,
}

impl Name {
    /// `text` must be a lowercase token (the validator's job).
    pub(crate) fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        Name {
            #[cfg(feature = "http")]
            parsed: http::HeaderName::from_bytes(text.as_bytes()).ok(),
            text,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The name as `http` parsed it (every token parses).
    #[cfg(feature = "http")]
    pub fn header_name(&self) -> Option<&http::HeaderName> {
        self.parsed.as_ref()
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.text, f)
    }
}

/// A fixed header value from a policy (checked at load), with the `http`
/// feature also as the `http::HeaderValue` a host can clone instead of
/// parsing. Reads as a `&str`.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    text: String,
    #[cfg(feature = "http")]
    parsed: Option<http::HeaderValue>,
}

impl Value {
    /// `text` must be a field value (the validator's job).
    pub(crate) fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        Value {
            #[cfg(feature = "http")]
            parsed: http::HeaderValue::from_str(&text).ok(),
            text,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value as `http` parsed it (every field value parses).
    #[cfg(feature = "http")]
    pub fn header_value(&self) -> Option<&http::HeaderValue> {
        self.parsed.as_ref()
    }
}

impl std::ops::Deref for Value {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.text, f)
    }
}

/// An ordered list of fields with lowercase names: what the proxy-wasm
/// filter and the tests use, and a reference implementation of [`Headers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    fields: Vec<(String, Vec<u8>)>,
}

impl HeaderList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a list from fields as sent; names are lowercased.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let fields = pairs
            .into_iter()
            .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()))
            .collect();
        Self { fields }
    }

    /// Takes fields as a host hands them over, lowercasing names in place.
    pub fn from_owned(mut fields: Vec<(String, Vec<u8>)>) -> Self {
        for (name, _) in &mut fields {
            name.make_ascii_lowercase();
        }
        Self { fields }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields in order.
    pub fn fields(&self) -> &[(String, Vec<u8>)] {
        &self.fields
    }

    /// The fields grouped by name: names sorted, each name's values in
    /// order. Two maps with equal groups mean the same to HTTP.
    pub fn grouped(&self) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
        let mut groups: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
        for (name, value) in &self.fields {
            groups.entry(name.clone()).or_default().push(value.clone());
        }
        groups
    }
}

impl Headers for HeaderList {
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.append(name, value);
    }

    fn append(&mut self, name: &str, value: &[u8]) {
        self.fields.push((name.to_owned(), value.to_vec()));
    }

    fn remove(&mut self, name: &str) {
        self.fields.retain(|(n, _)| n != name);
    }
}

#[cfg(feature = "http")]
impl Headers for http::HeaderMap {
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        http::HeaderMap::get_all(self, name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        http::HeaderMap::iter(self).map(|(n, v)| (n.as_str(), v.as_bytes()))
    }

    fn set(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            self.insert(name, value);
        }
    }

    fn append(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            http::HeaderMap::append(self, name, value);
        }
    }

    fn remove(&mut self, name: &str) {
        http::HeaderMap::remove(self, name);
    }
}

/// An RFC 9110 token (`tchar`): what a header name, a method and a CORS
/// header name must be.
pub fn is_token(s: &str) -> bool {
    is_token_bytes(s.as_bytes())
}

/// [`is_token`] of bytes (a token is ASCII): one table lookup per byte,
/// for hosts that check every name a filter writes.
pub fn is_token_bytes(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| TCHAR[usize::from(c)])
}

const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        c += 1;
    }
    table
};

/// A field value this crate will emit: visible ASCII, spaces and tabs
/// inside, nothing at either end. ASCII only, so every host (Envoy, the
/// `http` crate, Pingora) passes it on unchanged.
pub fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        && !s.starts_with([' ', '\t'])
        && !s.ends_with([' ', '\t'])
}

/// Names only the proxy may write: framing, hop-by-hop, the host, and
/// `x-forwarded-proto`. A policy that changed them would break the
/// connection or the routing, and hosts treat them differently (HTTP/2 has
/// no `connection`; Envoy routes no request without `x-forwarded-proto`:
/// a filter that removes it gets a 404). Strip prefixes pass over them.
pub const MANAGED_NAMES: &[&str] = &[
    "host",
    "x-forwarded-proto",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Whether `name` (any case) is one of [`MANAGED_NAMES`].
pub fn is_managed(name: &str) -> bool {
    MANAGED_NAMES.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// The one value of `name` when there is exactly one and it is UTF-8: how a
/// request's `Origin` is read for [`RequestFacts`](crate::RequestFacts).
pub fn single_value<'a>(headers: &'a impl Headers, name: &'a str) -> Option<&'a str> {
    let mut values = headers.get_all(name);
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(first).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_values() {
        assert!(is_token("x-a_b.c~!#$%&'*+^`|"));
        assert!(!is_token("") && !is_token("x a") && !is_token("x:a") && !is_token(":path"));
        assert!(!is_token("é") && !is_token("x\"") && !is_token("a(b)"));
        assert!(is_field_value("") && is_field_value("a b\tc") && is_field_value("\"q\""));
        assert!(!is_field_value(" a") && !is_field_value("a\t") && !is_field_value("a\r\nb"));
        assert!(!is_field_value("nul\0") && !is_field_value("é") && !is_field_value("\x7f"));
    }

    #[test]
    fn list_keeps_order_and_repeats() {
        let mut h = HeaderList::from_pairs([("Set-Cookie", "a"), ("X", "1"), ("set-cookie", "b")]);
        assert_eq!(h.get_all("set-cookie").collect::<Vec<_>>(), [b"a", b"b"]);
        assert_eq!(single_value(&h, "set-cookie"), None);
        assert_eq!(single_value(&h, "x"), Some("1"));
        h.set("set-cookie", b"c");
        assert_eq!(h.get_all("set-cookie").collect::<Vec<_>>(), [b"c"]);
        h.append("x", b"2");
        assert_eq!(h.get("x"), Some(&b"1"[..]));
        assert_eq!(h.grouped()["x"], [b"1".to_vec(), b"2".to_vec()]);
        h.remove("x");
        assert!(!h.contains("x") && h.len() == 1);
    }

    #[cfg(feature = "http")]
    #[test]
    fn header_map_behaves_like_the_list() {
        let mut m = http::HeaderMap::new();
        let mut l = HeaderList::new();
        for (n, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
            Headers::append(&mut m, n, v.as_bytes());
            l.append(n, v.as_bytes());
        }
        Headers::set(&mut m, "b", b"4");
        l.set("b", b"4");
        Headers::remove(&mut m, "a");
        l.remove("a");
        Headers::append(&mut m, "c", b"");
        l.append("c", b"");
        let from_map = HeaderList::from_pairs(Headers::iter(&m));
        assert_eq!(from_map.grouped(), l.grouped());
        assert_eq!(Headers::get(&m, "c"), Some(&b""[..]));
    }
}
