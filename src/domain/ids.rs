//! Identifiers that callers choose (authorization, card, cardholder, merchant, request and
//! idempotency ids): bounded, printable, and never a card number, so nothing unbounded or
//! sensitive reaches a log line, an index or the store.

/// Longest id accepted anywhere.
pub const ID_LEN_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {ID_LEN_MAX} characters")]
    TooLong,
    #[error("must be printable ASCII without spaces")]
    NotPrintable,
    /// 13 to 19 digits passing the Luhn check: refused so that a caller's mistake cannot
    /// put a card number into the logs or the store.
    #[error("looks like a card number; send the card's token, never its number")]
    CardNumber,
}

/// Checks an id a caller chose.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > ID_LEN_MAX {
        return Err(IdError::TooLong);
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IdError::NotPrintable);
    }
    if contains_card_number(s) {
        return Err(IdError::CardNumber);
    }
    Ok(())
}

/// Whether any run of 13 to 19 consecutive digits in `s` passes the Luhn check.
pub fn contains_card_number(s: &str) -> bool {
    s.as_bytes()
        .split(|b| !b.is_ascii_digit())
        .any(|run| (13..=19).contains(&run.len()) && luhn(run))
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(d - b'0');
            if i % 2 == 1 {
                let x = v * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                v
            }
        })
        .sum();
    sum % 10 == 0
}

/// At most the first `ID_LEN_MAX` characters of `s`, for echoing an invalid id.
pub fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(ID_LEN_MAX).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_refused_wherever_they_appear() {
        for pan in [
            "4111111111111111",
            "auth_5555555555554444",
            "378282246310005-x",
        ] {
            assert_eq!(check_id(pan), Err(IdError::CardNumber), "{pan}");
        }
        // Digits that fail Luhn, or runs too short or too long, are ordinary ids.
        for ok in [
            "4111111111111112",
            "auth_000123",
            "123456789012",
            "card_5f3a9c",
        ] {
            assert_eq!(check_id(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        assert_eq!(check_id(""), Err(IdError::Empty));
        assert_eq!(check_id(&"x".repeat(65)), Err(IdError::TooLong));
        assert_eq!(check_id("a b"), Err(IdError::NotPrintable));
        assert_eq!(check_id(&"x".repeat(64)), Ok(()));
        assert_eq!(shorten(&"y".repeat(5000)).chars().count(), 65);
    }
}
