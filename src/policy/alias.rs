//! The YAML alias guard: anchors and aliases are refused before parsing, so a
//! "billion laughs" file fails at once (named lists do the job aliases would).

/// 1-based position of the first YAML anchor or alias: `&x` / `*x` where a value starts,
/// outside quotes and comments.
pub(super) fn find_yaml_alias(text: &str) -> Option<(usize, usize)> {
    for (n, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let mut quote: Option<u8> = None;
        let mut value_start = true; // start of line (after indentation) can hold a value
        for (i, &c) in b.iter().enumerate() {
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                b'"' | b'\'' if value_start => quote = Some(c),
                b'#' if i == 0 || b[i - 1] == b' ' => break,
                b'&' | b'*' if value_start => {
                    if b.get(i + 1)
                        .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'_')
                    {
                        return Some((n + 1, i + 1));
                    }
                    value_start = false;
                }
                b' ' | b'\t' => {}
                b'[' | b',' | b'{' | b'-' => value_start = true,
                b':' => value_start = b.get(i + 1).is_none_or(|x| *x == b' '),
                _ => value_start = false,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find_yaml_alias;

    #[test]
    fn finds_anchors_and_aliases_only_where_values_start() {
        assert_eq!(find_yaml_alias("a: &x [1]\n"), Some((1, 4)));
        assert_eq!(find_yaml_alias("a:\n  - *x\n"), Some((2, 5)));
        assert_eq!(find_yaml_alias("b: [*a, *a]\n"), Some((1, 5)));
        assert_eq!(find_yaml_alias("w: 'txn.amount * 2 > 5'\n"), None);
        assert_eq!(find_yaml_alias("w: \"*x\"\n"), None);
        assert_eq!(find_yaml_alias("w: a*b # *c\n"), None);
    }
}
