//! The shape of the code, kept by a test: no import cycle among `src/` modules, no file
//! over the size limit, the service free of HTTP types and clock reads, HTTP free of SQL,
//! and no load-generation code in the library.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const FILE_LINES_MAX: usize = 700;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("src readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`src/policy/compile.rs` → `policy`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    if first == "bin" || first == "main.rs" || first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Library code only: `#[cfg(test)]` modules at the end of a file and comments are left out.
fn library_text(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("readable");
    let code = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let text = library_text(f);
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m {
                deps.insert(name);
            }
        }
    }
    g
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycle_among_src_modules() {
    let g = graph();
    assert!(
        g.contains_key("decision") && g.contains_key("policy"),
        "{g:?}"
    );
    if let Some(c) = find_cycle(&g) {
        panic!("import cycle: {}", c.join(" -> "));
    }
}

#[test]
fn domain_types_import_nothing_of_ours() {
    let g = graph();
    let deps = g.get("domain").expect("src/domain exists");
    assert!(deps.is_empty(), "domain imports {deps:?}");
}

#[test]
fn no_source_file_over_the_size_limit() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = fs::read_to_string(f).ok()?.lines().count();
            (n > FILE_LINES_MAX).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {FILE_LINES_MAX} lines: {long:?}");
}

fn files_of(module: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .into_iter()
        .filter(|f| module_of(f).as_deref() == Some(module))
        .map(|f| {
            let t = library_text(&f);
            (f, t)
        })
        .collect()
}

#[test]
fn service_has_no_http_types_clock_reads_or_random_ids() {
    for (f, text) in files_of("service") {
        for banned in [
            "axum",
            "crate::http",
            "Utc::now",
            "SystemTime::now",
            "Uuid::new_v4",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", f.display());
        }
    }
}

#[test]
fn http_has_no_sql() {
    for (f, text) in files_of("http") {
        for banned in ["rusqlite", "SELECT ", "INSERT ", "crate::store"] {
            assert!(!text.contains(banned), "{} uses {banned}", f.display());
        }
    }
}

#[test]
fn library_exports_no_load_generation_code() {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    for banned in ["loadgen", "stress"] {
        assert!(!lib.contains(banned), "lib.rs names {banned}");
    }
    assert!(!src().join("loadgen.rs").exists() && !src().join("stress.rs").exists());
}

#[test]
fn readme_code_map_names_every_module() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let map_start = readme.find("## Code map").expect("README has a code map");
    let map = &readme[map_start..];
    let mut missing = Vec::new();
    for dir in [
        src(),
        src().join("service"),
        src().join("http"),
        src().join("policy"),
    ] {
        for e in fs::read_dir(&dir).expect("readable") {
            let p = e.expect("entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name == "lib.rs" || name == "mod.rs" || name.ends_with("_tests.rs") {
                continue;
            }
            let shown = if p.is_dir() {
                format!("{name}/")
            } else {
                name.to_string()
            };
            if !map.contains(&shown) {
                missing.push(p.display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "README code map misses {missing:?}");
}
