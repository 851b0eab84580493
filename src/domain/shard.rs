//! Which shard a program lives in, and which shard a program API key names.
//!
//! Several instances on PostgreSQL split the programs between them: every program (its
//! cards, cardholders, funding accounts, counters, events) lives whole in one of a fixed
//! number of shards, so every money movement and every velocity scope — program scope
//! included — stays inside one shard's fenced commit. The count is fixed when the
//! database is first set up (resharding is not supported); a program's shard is a pure
//! function of its id, so any instance routes without a lookup.

/// The most shards a database may be split into (each owned shard costs its owner a
/// writer thread and four database connections: writer, two readers, lease — mind
/// PostgreSQL's `max_connections`).
pub const SHARDS_MAX: u32 = 256;

/// Hex digits after `sk_` that name a key's shard in a sharded deployment.
const KEY_SHARD_HEX: usize = 4;

/// The shard of `program` among `shards` (stable across versions and machines: the
/// first 8 bytes of the id's SHA-256, modulo the count).
pub fn shard_of_program(program: &str, shards: u32) -> u32 {
    use sha2::{Digest, Sha256};
    if shards <= 1 {
        return 0;
    }
    let digest = Sha256::digest(program.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % u64::from(shards)) as u32
}

/// A program API key for a program in `shard`: `sk_` + the shard in 4 hex digits + the
/// random part (`random_hex`, 60 hex digits used), so the front door can route a key
/// without looking it up. Unsharded (`shards` ≤ 1), keys carry no shard.
pub fn key_for_shard(random_hex: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 {
        return format!("sk_{random_hex}");
    }
    let rest = &random_hex[..random_hex.len().saturating_sub(KEY_SHARD_HEX)];
    format!("sk_{shard:04x}{rest}")
}

/// The shard a program key names, when it names one that exists.
pub fn shard_of_key(key: &str, shards: u32) -> Option<u32> {
    if shards <= 1 {
        return Some(0);
    }
    let digits = key.strip_prefix("sk_")?.get(..KEY_SHARD_HEX)?;
    let shard = u32::from_str_radix(digits, 16).ok()?;
    (shard < shards).then_some(shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_always_lands_in_the_same_shard() {
        // Pinned: a change here would strand every existing program in the wrong shard.
        assert_eq!(shard_of_program("acme", 8), shard_of_program("acme", 8));
        let pinned: Vec<u32> = ["acme", "globex", "initech", "p1", "p2"]
            .iter()
            .map(|p| shard_of_program(p, 16))
            .collect();
        // Independently computed (Python hashlib) for these ids.
        assert_eq!(pinned, vec![0, 7, 3, 3, 12]);
        assert_eq!(shard_of_program("acme", 1), 0);
    }

    #[test]
    fn programs_spread_over_the_shards() {
        let mut per_shard = [0u32; 8];
        for i in 0..8_000 {
            per_shard[shard_of_program(&format!("program-{i}"), 8) as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|n| (800..1_200).contains(n)),
            "{per_shard:?}"
        );
    }

    #[test]
    fn a_key_names_its_shard() {
        let random = "0123456789abcdef".repeat(4);
        let key = key_for_shard(&random, 5, 16);
        assert_eq!(key.len(), "sk_".len() + 64);
        assert_eq!(shard_of_key(&key, 16), Some(5));
        assert_eq!(key_for_shard(&random, 0, 1), format!("sk_{random}"));
        assert_eq!(shard_of_key("sk_ffff00", 16), None, "no such shard");
        assert_eq!(shard_of_key("adm_0001", 16), None);
        assert_eq!(shard_of_key("sk_00", 16), None);
        assert_eq!(shard_of_key("anything", 1), Some(0));
    }
}
