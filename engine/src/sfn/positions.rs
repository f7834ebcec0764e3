//! Where each field of a YAML (or JSON) document is written, so that a
//! validation error can name a line and column. Built from saphyr-parser's
//! events: every mapping key, mapping value and sequence item gets the
//! position where it starts, keyed by its path from the document root.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

impl From<&str> for Step {
    fn from(s: &str) -> Self {
        Step::Key(s.to_string())
    }
}

impl From<&String> for Step {
    fn from(s: &String) -> Self {
        Step::Key(s.clone())
    }
}

impl From<usize> for Step {
    fn from(i: usize) -> Self {
        Step::Index(i)
    }
}

/// 1-based (line, column).
pub(crate) type Pos = (usize, usize);

/// The positions of the first document of a YAML text.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    /// Where the key of a mapping entry is written.
    keys: HashMap<Vec<Step>, Pos>,
    /// Where a node (a mapping value, a sequence item, the root) starts.
    values: HashMap<Vec<Step>, Pos>,
}

impl Positions {
    /// Reads `text`; a text that does not parse gives no positions (its syntax
    /// error is reported by the parser that reads it for real).
    pub(crate) fn new(text: &str) -> Self {
        enum Frame {
            Map {
                path: Vec<Step>,
                key: Option<String>,
            },
            Seq {
                path: Vec<Step>,
                next: usize,
            },
        }
        let mut out = Positions::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0;
        while let Some(Ok((event, span))) = parser.next_event() {
            let at = (span.start.line(), span.start.col() + 1);
            // The path of the node this event starts, or None for a mapping key.
            let node_path = |stack: &mut Vec<Frame>| -> Option<Vec<Step>> {
                match stack.last_mut() {
                    None => Some(Vec::new()),
                    Some(Frame::Seq { path, next }) => {
                        let mut p = path.clone();
                        p.push(Step::Index(*next));
                        *next += 1;
                        Some(p)
                    }
                    Some(Frame::Map { path, key }) => key.take().map(|k| {
                        let mut p = path.clone();
                        p.push(Step::Key(k));
                        p
                    }),
                }
            };
            match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        break;
                    }
                }
                Event::Scalar(value, ..) => match node_path(&mut stack) {
                    Some(p) => {
                        out.values.entry(p).or_insert(at);
                    }
                    None => {
                        if let Some(Frame::Map { path, key }) = stack.last_mut() {
                            let mut p = path.clone();
                            p.push(Step::Key(value.to_string()));
                            out.keys.entry(p).or_insert(at);
                            *key = Some(value.into_owned());
                        }
                    }
                },
                Event::Alias(_) => {
                    if let Some(p) = node_path(&mut stack) {
                        out.values.entry(p).or_insert(at);
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    // A collection used as a mapping key is not addressable.
                    let p = node_path(&mut stack).unwrap_or_else(|| vec![Step::Index(usize::MAX)]);
                    out.values.entry(p.clone()).or_insert(at);
                    stack.push(if is_map {
                        Frame::Map { path: p, key: None }
                    } else {
                        Frame::Seq { path: p, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        out
    }

    /// Where the key `path` is written; the nearest enclosing thing written when
    /// it is not (a missing field points at its parent).
    pub(crate) fn key(&self, path: &[Step]) -> Pos {
        self.lookup(path, true)
    }

    /// Where the value at `path` starts; the nearest enclosing thing written
    /// when it is not.
    pub(crate) fn value(&self, path: &[Step]) -> Pos {
        self.lookup(path, false)
    }

    fn lookup(&self, path: &[Step], key_first: bool) -> Pos {
        let mut p = path;
        loop {
            let found = if key_first || p.len() < path.len() {
                self.keys.get(p).or_else(|| self.values.get(p))
            } else {
                self.values.get(p).or_else(|| self.keys.get(p))
            };
            if let Some(&pos) = found {
                return pos;
            }
            match p.split_last() {
                Some((_, rest)) => p = rest,
                None => return (1, 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(steps: &[&str]) -> Vec<Step> {
        steps
            .iter()
            .map(|s| match s.parse::<usize>() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::from(*s),
            })
            .collect()
    }

    #[test]
    fn keys_values_and_items_are_found_where_written() {
        let pos = Positions::new("a:\n  b: x\n  list:\n    - one\n    - k: v\n");
        assert_eq!(pos.key(&p(&["a", "b"])), (2, 3));
        assert_eq!(pos.value(&p(&["a", "b"])), (2, 6));
        assert_eq!(pos.value(&p(&["a", "list", "1"])), (5, 7));
        assert_eq!(pos.key(&p(&["a", "list", "1", "k"])), (5, 7));
        // Missing: the nearest written ancestor.
        assert_eq!(pos.key(&p(&["a", "missing"])), (1, 1));
        assert_eq!(pos.value(&p(&["a", "list", "1", "zz"])), (5, 7));
    }

    #[test]
    fn json_is_found_too() {
        let pos = Positions::new("{\n  \"startAt\": \"a\",\n  \"states\": {}\n}");
        assert_eq!(pos.key(&p(&["states"])), (3, 3));
        assert_eq!(pos.value(&p(&["startAt"])), (2, 14));
    }
}
