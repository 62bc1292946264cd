//! The layout the architecture document promises: ferry's top-level modules
//! form no import cycle, and the shared descriptions are leaves (`arch`
//! reads only the file format and the block types; `units` and `trace`
//! nothing of ferry's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the top-level modules its code names as `crate::…`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    let mut deps = BTreeMap::new();
    for m in &modules {
        let mut files = Vec::new();
        if src.join(m).is_dir() {
            rust_files(&src.join(m), &mut files);
        }
        if src.join(format!("{m}.rs")).exists() {
            files.push(src.join(format!("{m}.rs")));
        }
        let mut uses = BTreeSet::new();
        for f in files {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                // Code, not comments.
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("crate::") {
                    let rest = &code[i + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if modules.contains(&name) && &name != m {
                        uses.insert(name);
                    }
                }
            }
        }
        deps.insert(m.clone(), uses);
    }
    deps
}

#[test]
fn modules_form_no_cycle() {
    let deps = dependencies();
    assert!(deps.len() > 10, "{deps:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} → {m}", path[at..].join(" → "));
        }
        path.push(m.to_string());
        for d in &deps[m] {
            visit(d, deps, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        visit(m, &deps, &mut Vec::new(), &mut done);
    }
}

#[test]
fn descriptions_and_units_are_leaves() {
    let deps = dependencies();
    let allowed = |m: &str| -> BTreeSet<String> {
        match m {
            "arch" => ["gguf", "quant"].iter().map(|s| s.to_string()).collect(),
            _ => BTreeSet::new(),
        }
    };
    for m in ["arch", "units", "trace"] {
        let ok = allowed(m);
        let extra: Vec<_> = deps[m].difference(&ok).collect();
        assert!(extra.is_empty(), "{m} imports {extra:?}");
    }
    assert!(!deps["backend"].contains("model") && !deps["backend"].contains("engine"));
}
