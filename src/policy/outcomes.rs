//! How a rule acts when its check fires: its mode (enforce or shadow) and its outcome
//! (decline with a code, flag, or score).

use super::compile::Ctx;
use super::raw::{RawPolicy, RawRule};
use super::*;

pub(super) fn compile_mode(cx: &mut Ctx<'_>, i: usize, r: &RawRule) -> Mode {
    match r.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(m) => {
            cx.rule_err(
                i,
                &["mode"],
                format!("mode `{m}` must be enforce or shadow"),
            );
            Mode::Enforce
        }
    }
}

pub(super) fn compile_outcome(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &RawRule,
    raw: &RawPolicy,
    check: &Check,
) -> Outcome {
    let outcomes = [r.decline.is_some(), r.flag.is_some(), r.score.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if outcomes > 1 {
        cx.rule_err(
            i,
            &["decline"],
            "a rule has one outcome: decline, flag or score",
        );
    }
    if matches!(check, Check::Script { .. }) && outcomes > 0 {
        cx.rule_err(
            i,
            &["script"],
            "a script rule decides its own outcome; remove decline/flag/score",
        );
    }
    if let Some(code) = &r.decline {
        match crate::domain::ResponseCode::parse_decline(code.as_str()) {
            Ok(c) => Outcome::Decline(Some(c)),
            Err(e) => {
                cx.rule_err(i, &["decline"], e);
                Outcome::Decline(None)
            }
        }
    } else if r.flag == Some(true) {
        Outcome::Flag
    } else if let Some(points) = r.score {
        if !(-1000..=1000).contains(&points) || points == 0 {
            cx.rule_err(
                i,
                &["score"],
                format!("score {points} must be non-zero and within -1000..=1000"),
            );
        }
        if raw.score_decline_at.is_none() {
            cx.rule_err(
                i,
                &["score"],
                "score rules need score_decline_at at the top of the policy",
            );
        }
        Outcome::Score(points)
    } else {
        if r.flag == Some(false) {
            cx.rule_err(i, &["flag"], "flag: false has no meaning; remove it");
        }
        Outcome::Decline(None)
    }
}
