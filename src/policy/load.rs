//! Loading policies from disk: a rules directory (every `*.yaml` plus `fx/rates.yaml`)
//! or one file, each compiled with its scripts read from beside it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compile::compile_policy;
use super::*;
use crate::money::FxTable;

/// All policies of a rules directory and the FX table they use.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub dir: PathBuf,
    pub policies: Policies,
    pub fx: Arc<FxTable>,
}

impl PolicySet {
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(name)
    }
}

pub(super) fn plain_error(file: &Path, message: String) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        rule: None,
        message,
    }
}

/// Loads `dir/fx/rates.yaml` if present; an empty table converts only like-for-like.
fn load_fx(dir: &Path) -> Result<Arc<FxTable>, PolicyError> {
    let path = dir.join("fx").join("rates.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => FxTable::from_yaml(&text)
            .map(Arc::new)
            .map_err(|m| plain_error(&path, format!("FX rates: {m}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Arc::new(FxTable::default())),
        Err(e) => Err(plain_error(&path, e.to_string())),
    }
}

/// Loads every `*.yaml` policy directly inside `dir` (sub-folders hold scripts and FX).
pub fn load_policy_dir(dir: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    let fx = load_fx(dir).map_err(|e| vec![e])?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            vec![plain_error(
                dir,
                format!("cannot read rules directory: {e}"),
            )]
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(vec![plain_error(
            dir,
            "no policy files (*.yaml) found".into(),
        )]);
    }
    let mut errors = Vec::new();
    let mut policies = Policies::new();
    for f in files {
        match load_policy_file_with_fx(&f, fx.clone()) {
            Ok(p) => {
                if let Some(prev) = policies.get(&p.name) {
                    errors.push(PolicyError {
                        file: f.clone(),
                        line: 1,
                        column: 1,
                        rule: None,
                        message: format!(
                            "policy name `{}` is already used by {}",
                            p.name,
                            prev.file.display()
                        ),
                    });
                } else {
                    policies.insert(p.name.clone(), Arc::new(p));
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(PolicySet {
            dir: dir.to_path_buf(),
            policies,
            fx,
        })
    } else {
        Err(errors)
    }
}

/// Loads one policy file, with the FX table of its directory.
pub fn load_policy_file(path: &Path) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fx = load_fx(dir).map_err(|e| vec![e])?;
    load_policy_file_with_fx(path, fx)
}

fn load_policy_file_with_fx(
    path: &Path,
    fx: Arc<FxTable>,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let meta = std::fs::metadata(path).map_err(|e| vec![plain_error(path, e.to_string())])?;
    if meta.len() > POLICY_BYTES_MAX as u64 {
        return Err(vec![plain_error(
            path,
            format!(
                "file is {} bytes, above the {POLICY_BYTES_MAX}-byte limit",
                meta.len()
            ),
        )]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| vec![plain_error(path, e.to_string())])?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    compile_policy(path, &text, fx, &|rel: &Path| {
        std::fs::read_to_string(base.join(rel))
    })
}
