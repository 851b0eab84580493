//! Finds the line and column of rules and keys in a policy's text, so that errors found
//! after parsing (unknown list, bad code) still point at the place to fix.

pub struct Locator<'a> {
    lines: Vec<&'a str>,
    /// (line index, indent of the `- `) of each rule item, in order.
    rule_starts: Vec<(usize, usize)>,
    /// Line index just past the `rules:` section.
    rules_end: usize,
}

fn strip_item(line: &str) -> (usize, &str) {
    let indent = line.len() - line.trim_start().len();
    let t = line.trim_start();
    match t.strip_prefix("- ") {
        Some(rest) => (indent, rest.trim_start()),
        None => (indent, t),
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    let s = s.split(" #").next().unwrap_or(s).trim();
    s.trim_matches('"').trim_matches('\'')
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Locator<'a> {
        let lines: Vec<&str> = text.lines().collect();
        let mut rule_starts = Vec::new();
        let mut in_rules = false;
        let mut item_indent: Option<usize> = None;
        let mut rules_end = lines.len();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with(' ')
                && !line.starts_with('-')
                && !line.trim().is_empty()
                && !line.starts_with('#')
            {
                if in_rules {
                    rules_end = i;
                }
                in_rules = line.starts_with("rules:");
                item_indent = None;
                continue;
            }
            if !in_rules {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            if line.trim_start().starts_with("- ") || line.trim() == "-" {
                match item_indent {
                    None => {
                        item_indent = Some(indent);
                        rule_starts.push((i, indent));
                    }
                    Some(ind) if ind == indent => rule_starts.push((i, indent)),
                    _ => {}
                }
            }
        }
        Locator {
            lines,
            rule_starts,
            rules_end,
        }
    }

    /// 1-based (line, column) of rule `index`.
    pub fn rule(&self, index: usize) -> (usize, usize) {
        match self.rule_starts.get(index) {
            Some(&(l, ind)) => (l + 1, ind + 3),
            None => (1, 1),
        }
    }

    /// Index of the rule whose text contains 1-based `line`.
    pub fn rule_at_line(&self, line: usize) -> Option<usize> {
        if line > self.rules_end {
            return None;
        }
        self.rule_starts.iter().rposition(|&(l, _)| l < line)
    }

    /// The rule's `id:` value as written at `index`, if found.
    pub fn rule_id_text(&self, index: usize) -> Option<String> {
        let (start, end) = self.rule_span(index)?;
        (start..end).find_map(|i| {
            let (_, t) = strip_item(self.lines[i]);
            t.strip_prefix("id:").map(|v| unquote(v).to_string())
        })
    }

    fn rule_span(&self, index: usize) -> Option<(usize, usize)> {
        let &(start, indent) = self.rule_starts.get(index)?;
        let end = (start + 1..self.lines.len())
            .find(|&i| {
                let l = self.lines[i];
                let ind = l.len() - l.trim_start().len();
                !l.trim().is_empty() && !l.trim_start().starts_with('#') && ind <= indent
            })
            .unwrap_or(self.lines.len());
        Some((start, end))
    }

    /// 1-based (line, column) of `key:` inside rule `index` (nested keys searched in
    /// order given), falling back to the rule's own position.
    pub fn rule_key(&self, index: usize, path: &[&str]) -> (usize, usize) {
        let Some((start, end)) = self.rule_span(index) else {
            return (1, 1);
        };
        let mut from = start;
        let mut found = self.rule(index);
        for key in path {
            let needle = format!("{key}:");
            let hit = (from..end).find_map(|i| {
                let line = self.lines[i];
                // Key at the start of the line or inside a flow mapping `{ key: ... }`.
                let (indent, t) = strip_item(line);
                if t.starts_with(&needle) {
                    return Some((i, line.len() - t.len()));
                }
                let _ = indent;
                line.find(&format!("{{ {needle}"))
                    .map(|c| (i, c + 2))
                    .or_else(|| line.find(&format!(", {needle}")).map(|c| (i, c + 2)))
                    .or_else(|| line.find(&format!("{{{needle}")).map(|c| (i, c + 1)))
            });
            match hit {
                Some((i, col)) => {
                    found = (i + 1, col + 1);
                    from = i;
                }
                None => break,
            }
        }
        found
    }

    /// 1-based (line, column) of a top-level key, or (1, 1).
    pub fn top_key(&self, key: &str) -> (usize, usize) {
        let needle = format!("{key}:");
        self.lines
            .iter()
            .position(|l| l.starts_with(&needle))
            .map_or((1, 1), |i| (i + 1, 1))
    }

    /// 1-based (line, column) of list entry `name:` under `lists:`.
    pub fn list(&self, name: &str) -> (usize, usize) {
        let needle = format!("{name}:");
        let start = self
            .lines
            .iter()
            .position(|l| l.starts_with("lists:"))
            .unwrap_or(0);
        (start..self.lines.len())
            .find(|&i| self.lines[i].trim_start().starts_with(&needle))
            .map_or(self.top_key("lists"), |i| {
                let l = self.lines[i];
                (i + 1, l.len() - l.trim_start().len() + 1)
            })
    }

    /// 1-based line of test `index` under `tests:`.
    pub fn test(&self, index: usize) -> usize {
        let Some(start) = self.lines.iter().position(|l| l.starts_with("tests:")) else {
            return 1;
        };
        let mut seen = 0;
        let mut indent = None;
        for i in start + 1..self.lines.len() {
            let l = self.lines[i];
            if !l.starts_with(' ')
                && !l.starts_with('-')
                && !l.trim().is_empty()
                && !l.starts_with('#')
            {
                break;
            }
            let ind = l.len() - l.trim_start().len();
            if l.trim_start().starts_with("- ") && indent.is_none_or(|x| x == ind) {
                indent = Some(ind);
                if seen == index {
                    return i + 1;
                }
                seen += 1;
            }
        }
        start + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "policy: p\ncurrency: USD\nrules:\n  - id: a\n    limit: { amount_max: 5 }\n  - id: \"b\"\n    velocity:\n      window: 2h\n      amount_max: 3\ntests:\n  - name: t1\n    expect: approve\n  - name: t2\n    expect: decline\n";

    #[test]
    fn finds_rules_and_keys() {
        let l = Locator::new(TEXT);
        assert_eq!(l.rule(0), (4, 5));
        assert_eq!(l.rule(1), (6, 5));
        assert_eq!(l.rule_id_text(1).as_deref(), Some("b"));
        assert_eq!(l.rule_key(0, &["limit", "amount_max"]), (5, 14));
        assert_eq!(l.rule_key(1, &["velocity", "window"]), (8, 7));
        assert_eq!(l.rule_at_line(9), Some(1));
        assert_eq!(l.top_key("currency"), (2, 1));
        assert_eq!(l.test(1), 13);
    }
}
