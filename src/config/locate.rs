//! Where each node sits in the YAML text, so an error found on the typed config (or on a
//! `serde_yaml::Value`, which has no positions) can still be reported as line:column.

use std::collections::HashMap;
use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into the config: a map key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

/// A path as users read it: `providers[1].timeouts.connect`.
pub(crate) struct PathDisplay<'a>(pub &'a [Seg]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column.
pub(crate) type Pos = (usize, usize);

#[derive(Clone, Copy)]
struct Node {
    value: Pos,
    key: Option<Pos>,
}

/// Deeper nodes are not indexed (their ancestors are): bounds memory on hostile input.
const MAX_DEPTH: usize = 200;

/// Path → position index of one YAML document.
#[derive(Default)]
pub(crate) struct Locator {
    index: HashMap<Vec<Seg>, Node>,
    stack: Vec<Frame>,
}

struct Frame {
    path: Vec<Seg>,
    start: Pos,
    /// Children are part of a complex map key (or too deep): not indexed.
    skip: bool,
    kind: Kind,
}

enum Kind {
    /// `None` while the next node is a key; `Some(key text, key position)` while it is the value.
    Map(Option<(String, Pos)>),
    /// Index of the next item.
    Seq(usize),
}

impl Locator {
    /// Indexes `text`; on a syntax error the nodes before it stay indexed.
    pub(crate) fn new(text: &str) -> Locator {
        let mut loc = Locator::default();
        // An error leaves a partial index, which the ancestor fallback copes with.
        let _ = Parser::new_from_str(text).load(&mut loc, false);
        loc.stack = Vec::new();
        loc
    }

    /// Position of the node at `path`, or of its nearest existing ancestor.
    pub(crate) fn value_pos(&self, path: &[Seg]) -> Pos {
        self.nearest(path).map_or((1, 1), |n| n.value)
    }

    /// Position of the key naming `path` (for unknown-field errors), else [`Self::value_pos`].
    pub(crate) fn key_pos(&self, path: &[Seg]) -> Pos {
        match self.index.get(path) {
            Some(Node { key: Some(k), .. }) => *k,
            _ => self.value_pos(path),
        }
    }

    fn nearest(&self, path: &[Seg]) -> Option<Node> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.index.get(&path[..n]).copied())
    }

    /// Records a node starting at `pos`; returns its path, or `None` if it is a map key.
    fn node(&mut self, pos: Pos) -> Option<Vec<Seg>> {
        let (mut path, mut key) = (Vec::new(), None);
        if let Some(f) = self.stack.last() {
            if f.skip || self.stack.len() > MAX_DEPTH {
                return None;
            }
            path.clone_from(&f.path);
            match &f.kind {
                Kind::Map(None) => return None,
                Kind::Map(Some((k, k_pos))) => {
                    path.push(Seg::Key(k.clone()));
                    key = Some(*k_pos);
                }
                Kind::Seq(i) => path.push(Seg::Index(*i)),
            }
        }
        self.index
            .entry(path.clone())
            .or_insert(Node { value: pos, key });
        Some(path)
    }

    /// A node (key or value) is complete: advance the enclosing collection.
    fn done(&mut self, text: String, pos: Pos) {
        let Some(f) = self.stack.last_mut() else {
            return;
        };
        match &mut f.kind {
            Kind::Seq(i) => *i += 1,
            Kind::Map(k) if k.is_some() => *k = None,
            Kind::Map(k) => {
                *k = Some((text, pos));
                // A block mapping's start event points at its first `:`; its first key is better.
                if let Some(n) = self.index.get_mut(&f.path).filter(|_| !f.skip) {
                    n.value = n.value.min(pos);
                }
            }
        }
    }
}

impl MarkedEventReceiver for Locator {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, ..) => {
                self.node(pos);
                self.done(text, pos);
            }
            Event::Alias(_) => {
                self.node(pos);
                self.done(String::new(), pos);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.node(pos);
                let kind = match ev {
                    Event::MappingStart(..) => Kind::Map(None),
                    _ => Kind::Seq(0),
                };
                let (skip, path, start) = (path.is_none(), path.unwrap_or_default(), pos);
                self.stack.push(Frame {
                    path,
                    start,
                    skip,
                    kind,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(f) = self.stack.pop() {
                    self.done(String::new(), f.start);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `providers[1].timeouts.connect` → segments (keys must not contain `.` or `[`).
    fn path(s: &str) -> Vec<Seg> {
        let mut out = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let mut pieces = part.split('[');
            out.extend(pieces.next().filter(|k| !k.is_empty()).map(Seg::from));
            out.extend(pieces.filter_map(|i| i.trim_end_matches(']').parse().ok().map(Seg::Index)));
        }
        out
    }

    const DOC: &str = "\
server:
  listen: 127.0.0.1:8080
providers:
  - name: a
    timeouts: { connect: 2s, total: 9s }
  - name: b
    timeouts:
      connect: 3s
models:
  - { name: chat, targets: [ { provider: a, model: m }, {provider: b, model: n} ] }
? [complex, key]
: { ignored: 1 }
last: end
";

    #[test]
    fn block_and_flow_positions() {
        let loc = Locator::new(DOC);
        let at = |p: &str| loc.value_pos(&path(p));
        assert_eq!(at("server.listen"), (2, 11));
        assert_eq!(at("providers[0].timeouts.connect"), (5, 26));
        assert_eq!(at("providers[0].timeouts.total"), (5, 37));
        assert_eq!(at("providers[1].timeouts.connect"), (8, 16));
        assert_eq!(at("models[0].targets[1].model"), (10, 78));
        assert_eq!(at("models[0].targets[1]"), (10, 57));
        assert_eq!(at("last"), (13, 7));
        assert_eq!(loc.key_pos(&path("providers[1].timeouts.connect")), (8, 7));
        assert_eq!(loc.key_pos(&path("server.listen")), (2, 3));
    }

    #[test]
    fn missing_paths_fall_back_to_nearest_ancestor() {
        let loc = Locator::new(DOC);
        assert_eq!(loc.value_pos(&path("providers[1].api_key")), (6, 5));
        assert_eq!(loc.value_pos(&path("providers[7].x")), (4, 3));
        assert_eq!(loc.value_pos(&path("nope.deeper")), (1, 1));
        assert_eq!(
            PathDisplay(&path("providers[1].timeouts.connect")).to_string(),
            "providers[1].timeouts.connect"
        );
    }
}
