//! A header map as the guest sees it during one callback: a copy of the
//! embedder's map in one reusable buffer, and a journal of the guest's
//! edits replayed onto the embedder's map when the callback returns (never
//! when it traps, so a crashed filter leaves the request as it was).
//! Buffers keep their capacity: no allocation per request once warm.
//!
//! As in Envoy, the request map starts with the pseudo-headers `:method`,
//! `:scheme`, `:authority`, `:path` and the response map with `:status`, so
//! filters written for Envoy read them the same way. They are read-only
//! here: the embedder's map has no such fields to write back to.

use std::ops::Range;

use header_policy::Headers;

#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
    live: bool,
    pseudo: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Append { name: (u32, u32), value: (u32, u32) },
    Set { name: (u32, u32), value: (u32, u32) },
    Remove { name: (u32, u32) },
    Clear,
}

/// One of the four HTTP maps.
#[derive(Debug, Default)]
pub(crate) struct FieldMap {
    buf: Vec<u8>,
    fields: Vec<Field>,
    journal: Vec<Op>,
    /// Bytes of live names and values, against the size limit.
    size: usize,
}

fn range((start, len): (u32, u32)) -> Range<usize> {
    start as usize..(start + len) as usize
}

impl FieldMap {
    /// Replaces the contents with `pseudo` (read-only, empty values
    /// skipped) and the embedder's map; clears the journal.
    pub(crate) fn load(&mut self, pseudo: &[(&str, &[u8])], headers: &impl Headers) {
        self.buf.clear();
        self.fields.clear();
        self.journal.clear();
        self.size = 0;
        for (name, value) in pseudo {
            if !value.is_empty() {
                self.push_field(name.as_bytes(), value, true);
            }
        }
        for (name, value) in headers.iter() {
            self.push_field(name.as_bytes(), value, false);
        }
    }

    fn push_field(&mut self, name: &[u8], value: &[u8], pseudo: bool) {
        let name = self.push_lower(name);
        let value = self.push(value);
        self.fields.push(Field {
            name,
            value,
            live: true,
            pseudo,
        });
        self.size += (name.1 + value.1) as usize;
    }

    /// Whether `value` is what the pseudo-header `name` holds.
    pub(crate) fn pseudo_is(&self, name: &[u8], value: &[u8]) -> bool {
        self.fields
            .iter()
            .any(|f| f.pseudo && self.bytes(f.name) == name && self.bytes(f.value) == value)
    }

    /// Empties the map (no embedder map in this phase).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
        self.journal.clear();
        self.size = 0;
    }

    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(bytes);
        (start, bytes.len() as u32)
    }

    fn push_lower(&mut self, bytes: &[u8]) -> (u32, u32) {
        let at = self.push(bytes);
        self.buf[range(at)].make_ascii_lowercase();
        at
    }

    fn bytes(&self, r: (u32, u32)) -> &[u8] {
        &self.buf[range(r)]
    }

    /// Live fields in order.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields
            .iter()
            .filter(|f| f.live)
            .map(|f| (self.bytes(f.name), self.bytes(f.value)))
    }

    pub(crate) fn len(&self) -> usize {
        self.fields.iter().filter(|f| f.live).count()
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Bytes held, dead fields and journal included.
    pub(crate) fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// The first value of `name` (case-insensitive), as Envoy answers.
    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.pairs()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Adds a field; `name` must be a token and `value` a valid value.
    pub(crate) fn append(&mut self, name: &[u8], value: &[u8]) {
        let name = self.push_lower(name);
        let value = self.push(value);
        self.fields.push(Field {
            name,
            value,
            live: true,
            pseudo: false,
        });
        self.size += (name.1 + value.1) as usize;
        self.journal.push(Op::Append { name, value });
    }

    /// Every value of `name` replaced by `value`.
    pub(crate) fn set(&mut self, name: &[u8], value: &[u8]) {
        let name = self.push_lower(name);
        self.kill(name);
        let value = self.push(value);
        self.fields.push(Field {
            name,
            value,
            live: true,
            pseudo: false,
        });
        self.size += (name.1 + value.1) as usize;
        self.journal.push(Op::Set { name, value });
    }

    pub(crate) fn remove(&mut self, name: &[u8]) {
        let lower = self.push_lower(name);
        if self.kill(lower) {
            self.journal.push(Op::Remove { name: lower });
        } else {
            self.buf.truncate(lower.0 as usize);
        }
    }

    /// Replaces every field but the pseudo-headers.
    pub(crate) fn replace_all(&mut self, pairs: &[(&[u8], &[u8])]) {
        for f in &mut self.fields {
            if f.live && !f.pseudo {
                f.live = false;
                self.size -= (f.name.1 + f.value.1) as usize;
            }
        }
        self.journal.push(Op::Clear);
        for (n, v) in pairs {
            self.append(n, v);
        }
    }

    /// Marks every field named `name` (lowercase, in the buffer) dead;
    /// whether there was one. Every name in the map is lowercase: lowered
    /// when loaded or written.
    fn kill(&mut self, name: (u32, u32)) -> bool {
        let mut any = false;
        for i in 0..self.fields.len() {
            let f = self.fields[i];
            if f.live && !f.pseudo && self.bytes(f.name) == self.bytes(name) {
                self.fields[i].live = false;
                self.size -= (f.name.1 + f.value.1) as usize;
                any = true;
            }
        }
        any
    }

    /// Whether the guest changed anything.
    pub(crate) fn changed(&self) -> bool {
        !self.journal.is_empty()
    }

    /// Applies the guest's edits to the embedder's map, in order.
    pub(crate) fn replay(&self, headers: &mut impl Headers) {
        // Names and values were checked (tokens, no control characters), and
        // names lowercased, when the guest wrote them.
        let text = |r: (u32, u32)| std::str::from_utf8(self.bytes(r)).unwrap_or_default();
        for op in &self.journal {
            match *op {
                Op::Append { name, value } => headers.append(text(name), self.bytes(value)),
                Op::Set { name, value } => headers.set(text(name), self.bytes(value)),
                Op::Remove { name } => headers.remove(text(name)),
                Op::Clear => {
                    let mut names: Vec<String> = Vec::new();
                    for (n, _) in headers.iter() {
                        if !names.iter().any(|x| x == n) {
                            names.push(n.to_owned());
                        }
                    }
                    for n in &names {
                        headers.remove(n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use header_policy::HeaderList;

    #[test]
    fn edits_replay_onto_the_embedder_map() {
        let mut embedder = HeaderList::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]);
        let mut map = FieldMap::default();
        map.load(&[(":path", b"/x"), (":scheme", b"")], &embedder);
        assert_eq!(map.get(b"A"), Some(&b"1"[..]));
        assert_eq!(map.get(b":path"), Some(&b"/x"[..]));
        assert_eq!(
            map.get(b":scheme"),
            None,
            "empty pseudo-headers are left out"
        );
        assert_eq!(map.len(), 4);
        map.remove(b"A");
        map.append(b"C", b"x");
        map.set(b"b", b"4");
        map.remove(b"missing");
        assert_eq!(map.len(), 3);
        assert_eq!(map.size(), ":path/x".len() + "c".len() + 1 + "b".len() + 1);
        map.replay(&mut embedder);
        assert_eq!(
            embedder.grouped(),
            HeaderList::from_pairs([("c", "x"), ("b", "4")]).grouped()
        );
        let pairs: Vec<_> = map.pairs().collect();
        assert_eq!(
            pairs,
            [
                (&b":path"[..], &b"/x"[..]),
                (&b"c"[..], &b"x"[..]),
                (&b"b"[..], &b"4"[..])
            ]
        );
    }

    #[test]
    fn replace_all_clears_first() {
        let mut embedder = HeaderList::from_pairs([("a", "1"), ("b", "2")]);
        let mut map = FieldMap::default();
        map.load(&[(":status", b"200")], &embedder);
        map.replace_all(&[(b"z", b"9"), (b"a", b"0")]);
        assert_eq!(
            map.get(b":status"),
            Some(&b"200"[..]),
            "pseudo-headers stay"
        );
        assert!(map.pseudo_is(b":status", b"200") && !map.pseudo_is(b":status", b"404"));
        map.replay(&mut embedder);
        assert_eq!(
            embedder.grouped(),
            HeaderList::from_pairs([("z", "9"), ("a", "0")]).grouped()
        );
        map.load(&[], &embedder);
        assert!(!map.changed());
    }
}
