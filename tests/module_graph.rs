//! The crate's top-level modules import each other in one direction only
//! (`lib.rs` draws the map): this reads every source file, collects the
//! `crate::<module>` paths each top-level module uses, prints the graph and
//! fails on any cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MODULES: [&str; 9] = [
    "auth",
    "bridge",
    "config",
    "demo",
    "metrics",
    "server",
    "session",
    "stomp",
    "transport",
];

fn sources(root: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = root.join(format!("{module}.rs"));
    if file.exists() {
        files.push(file);
    }
    let mut dirs = vec![root.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules `text` names as `crate::<module>`, comments aside.
fn imports(text: &str) -> BTreeSet<&'static str> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(m) = MODULES.iter().find(|m| **m == name) {
                found.insert(*m);
            }
        }
    }
    found
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for module in MODULES {
        let mut uses = BTreeSet::new();
        for file in sources(&root, module) {
            let text = std::fs::read_to_string(&file).expect("read source");
            uses.extend(imports(&text).into_iter().filter(|m| *m != module));
        }
        assert!(
            !sources(&root, module).is_empty(),
            "no source for module {module}"
        );
        graph.insert(module, uses);
    }
    for (module, uses) in &graph {
        println!("{module:10} -> {uses:?}");
    }
    // Depth-first search for a path that comes back to where it started.
    fn walk<'a>(
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<Vec<&'a str>>,
    ) {
        let Some(&last) = path.last() else { return };
        for &next in graph.get(last).into_iter().flatten() {
            if let Some(start) = path.iter().position(|m| *m == next) {
                let mut cycle = path[start..].to_vec();
                cycle.push(next);
                cycles.push(cycle);
            } else {
                path.push(next);
                walk(graph, path, cycles);
                path.pop();
            }
        }
    }
    let mut cycles = Vec::new();
    for module in MODULES {
        walk(&graph, &mut vec![module], &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
    // The protocol core stays pure: the codec and the session state
    // machine import nothing of the I/O layers.
    for pure in ["stomp", "session"] {
        for io in ["transport", "bridge", "server"] {
            assert!(!graph[pure].contains(io), "{pure} imports {io}");
        }
    }
}

#[test]
fn the_reader_sees_imports_and_skips_comments() {
    let text = "use crate::stomp::Frame;\n// crate::server is not a use\nlet x = crate::bridge::Backoff::new(); // crate::demo\n";
    assert_eq!(
        imports(text).into_iter().collect::<Vec<_>>(),
        ["bridge", "stomp"]
    );
}
