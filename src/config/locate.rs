//! Where a problem is in the file text. A syntax error: the parser's
//! location (refined to the quoted value). A problem with a value: the
//! place its key path (`routes[2].match`, `writes.timeout`) is written, from
//! the positions a YAML event parser gives each node ([`Spans`]), so an
//! error points at the value it is about even when the same text is
//! written elsewhere too.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The key path of a value, or none (`""`) when the command line gave it:
/// then it is nowhere in the file.
pub(super) fn from_file<'a, T>(overridden: &Option<T>, key: &'a str) -> &'a str {
    if overridden.is_some() {
        ""
    } else {
        key
    }
}

/// yaml_serde appends " at line L column C"; we print the location up front.
pub(super) fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The parser locates a bad value inside a list item at the item's start;
/// when the message quotes the value, point at the value itself.
pub(super) fn refine_location(
    text: &str,
    parser: Option<(usize, usize)>,
    message: &str,
) -> (Option<usize>, Option<usize>) {
    let quoted = message
        .split_once('"')
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(q, _)| q);
    if let (Some((line, _)), Some(q)) = (parser, quoted) {
        // Lines as YAML counts them, the parser's numbering: a lone CR
        // breaks a line too.
        let text = text.replace("\r\n", "\n");
        for (i, l) in text
            .split(['\n', '\r'])
            .enumerate()
            .skip(line.saturating_sub(1))
        {
            let code = without_comment(l);
            if let Some(at) = code.find(q) {
                // Columns count characters, as the parsers' do.
                return (Some(i + 1), Some(code[..at].chars().count() + 1));
            }
        }
    }
    match parser {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    }
}

/// Where each node of a YAML document is written: key path → (line,
/// column), both from 1. A mapping's value is at its key path (a scalar
/// where the value is written, a nested mapping or list where its key is);
/// a list's items are at `path[i]`.
#[derive(Debug, Default)]
pub(super) struct Spans {
    at: HashMap<String, (usize, usize)>,
}

impl Spans {
    /// The positions in `text`; up to the first syntax error, if any (the
    /// text was parsed by the config's own parser before: this one only
    /// locates).
    pub(super) fn of(text: &str) -> Spans {
        let mut walk = Walk::default();
        // yaml_serde skips a byte-order mark; this parser would read it as
        // part of the first key.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let _ = Parser::new_from_str(text).load(&mut walk, false);
        Spans { at: walk.at }
    }

    /// Where `path` is written, else where its nearest written parent is (a
    /// missing key is reported at the mapping that lacks it). `None` for
    /// the empty path and for nothing written.
    pub(super) fn find(&self, path: &str) -> (Option<usize>, Option<usize>) {
        let mut p = path;
        while !p.is_empty() {
            if let Some(&(line, column)) = self.at.get(p) {
                return (Some(line), Some(column));
            }
            p = parent(p);
        }
        (None, None)
    }
}

/// `a.b[2]` → `a.b`, `a.b` → `a`, `a` → ``.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// One open mapping or list while walking the events.
enum Frame {
    /// `key`: the key whose value comes next (`None`: a key comes next).
    Map {
        path: String,
        key: Option<String>,
    },
    List {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walk {
    stack: Vec<Frame>,
    at: HashMap<String, (usize, usize)>,
}

impl Walk {
    /// The path of the node that starts now, or `None` if it is a key.
    fn node_path(&mut self, key: Option<&str>, mark: Marker) -> Option<String> {
        let position = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::List { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map {
                path,
                key: k @ None,
            }) => {
                // A key: the value is reported here unless it is a scalar
                // written elsewhere (a nested block starts on a later line).
                let name = key.unwrap_or_default().to_string();
                let p = join(path, &name);
                self.at.entry(p).or_insert(position);
                *k = Some(name);
                None
            }
            Some(Frame::Map {
                path,
                key: k @ Some(_),
            }) => {
                let p = join(path, &k.take().unwrap_or_default());
                Some(p)
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Walk {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let position = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                // An empty value (`key:`) has no place of its own: the key's.
                let empty = value.is_empty();
                if let Some(p) = self.node_path(Some(&value), mark) {
                    if empty {
                        self.at.entry(p).or_insert(position);
                    } else {
                        self.at.insert(p, position);
                    }
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.node_path(Some(""), mark) {
                    self.at.insert(p, position);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A mapping or list as a key is not something a config has:
                // its contents are located under `?`.
                let path = self.node_path(None, mark).unwrap_or_else(|| "?".into());
                self.at.entry(path.clone()).or_insert(position);
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::List { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// A YAML line without its comment: from a `#` that starts the line or
/// follows a space or tab, outside quotes (a `#` inside a value, as in
/// `/a#b` or `"x # y"`, is not a comment).
pub(super) fn without_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous == ' ' || previous == '\t' => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_is_found_by_its_key_path() {
        let text = "a:\n  b: 1 # b\n  list:\n    - x\n    - {c: 2}\n  flow: [p, q]\nd:\n";
        let s = Spans::of(text);
        assert_eq!(s.find("a"), (Some(1), Some(1)));
        assert_eq!(s.find("a.b"), (Some(2), Some(6)));
        assert_eq!(s.find("a.list"), (Some(3), Some(3)));
        assert_eq!(s.find("a.list[0]"), (Some(4), Some(7)));
        assert_eq!(s.find("a.list[1].c"), (Some(5), Some(11)));
        assert_eq!(s.find("a.flow[1]"), (Some(6), Some(13)));
        // Not written: the nearest parent that is.
        assert_eq!(s.find("a.list[1].missing"), (Some(5), Some(7)));
        assert_eq!(s.find("a.nothing[3]"), (Some(1), Some(1)));
        assert_eq!(s.find("nowhere"), (None, None));
        assert_eq!(s.find(""), (None, None));
        assert_eq!(s.find("d"), (Some(7), Some(1)));
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let s = Spans::of("\u{feff}routes:\n  - name: a\n");
        assert_eq!(s.find("routes[0].name"), (Some(2), Some(11)));
    }

    #[test]
    fn a_refined_location_counts_lines_as_yaml_does() {
        // The parser puts the bad value at the list item's line (3); the
        // value is on line 4, after a lone CR.
        let text = "warm:\r\n  paths:\r  - /ok\r    - \"x\"\n";
        assert_eq!(
            refine_location(text, Some((3, 3)), "bad value \"x\""),
            (Some(4), Some(8))
        );
    }

    #[test]
    fn a_text_that_does_not_parse_keeps_what_came_before() {
        let s = Spans::of("a: 1\nb: [\n");
        assert_eq!(s.find("a"), (Some(1), Some(4)));
    }
}
