//! ISO 8583 field 39 response codes that spendgate answers with.

use std::fmt;

use serde::{Serialize, Serializer};

/// A two-digit DE39 response code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseCode([u8; 2]);

/// Codes this engine may answer with, and what each means. Policies may only use these.
pub const KNOWN_CODES: &[(&str, &str)] = &[
    ("00", "approved"),
    ("05", "do not honour"),
    ("10", "partial approval"),
    ("12", "invalid transaction"),
    ("13", "invalid amount"),
    ("14", "invalid card number"),
    ("30", "format error"),
    ("41", "lost card"),
    ("43", "stolen card"),
    ("46", "closed account"),
    ("51", "insufficient funds"),
    ("54", "expired card"),
    ("57", "transaction not permitted to cardholder"),
    ("59", "suspected fraud"),
    ("61", "exceeds withdrawal amount limit"),
    ("62", "restricted card"),
    ("65", "exceeds withdrawal count limit"),
    ("78", "blocked, first used"),
    ("91", "issuer unavailable"),
    ("93", "transaction cannot be completed, violation of law"),
    ("96", "system malfunction"),
];

impl ResponseCode {
    pub const APPROVED: ResponseCode = ResponseCode(*b"00");
    pub const DO_NOT_HONOUR: ResponseCode = ResponseCode(*b"05");
    pub const PARTIAL: ResponseCode = ResponseCode(*b"10");
    pub const INVALID_TRANSACTION: ResponseCode = ResponseCode(*b"12");
    pub const INVALID_AMOUNT: ResponseCode = ResponseCode(*b"13");
    pub const NO_SUCH_CARD: ResponseCode = ResponseCode(*b"14");
    pub const FORMAT_ERROR: ResponseCode = ResponseCode(*b"30");
    pub const LOST: ResponseCode = ResponseCode(*b"41");
    pub const STOLEN: ResponseCode = ResponseCode(*b"43");
    pub const CLOSED: ResponseCode = ResponseCode(*b"46");
    pub const INSUFFICIENT_FUNDS: ResponseCode = ResponseCode(*b"51");
    pub const EXPIRED: ResponseCode = ResponseCode(*b"54");
    pub const NOT_PERMITTED: ResponseCode = ResponseCode(*b"57");
    pub const FRAUD: ResponseCode = ResponseCode(*b"59");
    pub const AMOUNT_LIMIT: ResponseCode = ResponseCode(*b"61");
    pub const RESTRICTED: ResponseCode = ResponseCode(*b"62");
    pub const COUNT_LIMIT: ResponseCode = ResponseCode(*b"65");
    pub const ISSUER_UNAVAILABLE: ResponseCode = ResponseCode(*b"91");
    pub const SYSTEM_ERROR: ResponseCode = ResponseCode(*b"96");

    /// Parses a code from the known table.
    pub fn parse(s: &str) -> Result<ResponseCode, String> {
        match KNOWN_CODES.iter().find(|(c, _)| *c == s) {
            Some((c, _)) => {
                let b = c.as_bytes();
                Ok(ResponseCode([b[0], b[1]]))
            }
            None => Err(format!(
                "`{s}` is not a response code spendgate answers with (known: {})",
                KNOWN_CODES
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// A code usable as a rule's decline: not an approval code.
    pub fn parse_decline(s: &str) -> Result<ResponseCode, String> {
        let c = ResponseCode::parse(s)?;
        if c.is_approval() {
            return Err(format!("`{s}` is an approval code, not a decline code"));
        }
        Ok(c)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("96")
    }

    pub fn is_approval(self) -> bool {
        self == ResponseCode::APPROVED || self == ResponseCode::PARTIAL
    }

    pub fn meaning(self) -> &'static str {
        KNOWN_CODES
            .iter()
            .find(|(c, _)| c.as_bytes() == self.0)
            .map_or("unknown", |(_, m)| *m)
    }
}

impl fmt::Debug for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl Serialize for ResponseCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_codes_only() {
        assert_eq!(
            ResponseCode::parse("57").unwrap(),
            ResponseCode::NOT_PERMITTED
        );
        assert!(ResponseCode::parse("58").is_err());
        assert!(ResponseCode::parse("5").is_err());
        assert!(ResponseCode::parse_decline("00").is_err());
        assert_eq!(ResponseCode::FRAUD.meaning(), "suspected fraud");
    }
}
