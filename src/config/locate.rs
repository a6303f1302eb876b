//! Where a problem is in the file text: the parser's location of a syntax
//! error (refined to the quoted value), and the place a semantic problem's
//! value is written (the first mention outside comments).

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
        for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
            if let Some(col) = without_comment(l).find(q) {
                return (Some(i + 1), Some(col + 1));
            }
        }
    }
    match parser {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    }
}

/// Find where `needle` is written in the file, to locate a semantic error.
pub(super) fn locate(text: &str, needle: &str) -> (Option<usize>, Option<usize>) {
    if needle.is_empty() {
        return (None, None);
    }
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = without_comment(line).find(needle) {
            return (Some(i + 1), Some(col + 1));
        }
    }
    (None, None)
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
