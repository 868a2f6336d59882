//! The floors of the crate (see the crate's documentation): every module's `crate::` paths are
//! read from its source, and a module that names one from a higher layer, or a circle of modules
//! within a layer, fails the test with the offending paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first. A module may name modules of its own layer or of a lower one.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &["state_file", "config", "owner", "keys", "library", "admission", "metrics", "memory_budget", "sandbox", "recent_log", "web_certificate", "lines"]),
    ("services", &["engine", "cluster", "catalog", "hub", "update", "tune", "network", "seed", "system_settings", "backup"]),
    ("app", &["app", "diagnostics", "status_screen"]),
    ("surfaces", &["api", "web"]),
    ("verbs", &["cli"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// The top-level modules each top-level module names through `crate::`, with the file that
/// names it.
fn imports(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap();
        let module = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if ["lib", "main", "layers"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for target in crate_paths(code) {
                if target != module {
                    found.entry(module.clone()).or_default().entry(target).or_insert_with(|| relative.display().to_string());
                }
            }
        }
    }
    found
}

/// The first segment of each `crate::a::…` and `crate::{a, b::…}` path on a line.
fn crate_paths(code: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `hellas_crate::`
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            targets.extend(group.split(',').map(|p| p.trim().split("::").next().unwrap_or_default().to_string()));
        } else {
            targets.push(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default().to_string());
        }
    }
    targets.retain(|t| !t.is_empty() && t != "self");
    targets
}

#[test]
fn layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = imports(&src);
    let mut wrong = Vec::new();
    for (module, targets) in &imports {
        let Some(from) = layer_of(module) else {
            wrong.push(format!("module `{module}` is in no layer: add it to LAYERS in src/layers.rs"));
            continue;
        };
        for (target, file) in targets {
            match layer_of(target) {
                Some(to) if to > from => {
                    wrong.push(format!("{file}: `{module}` ({}) names `crate::{target}` ({}), a higher layer", LAYERS[from].0, LAYERS[to].0))
                }
                Some(_) => {}
                None => wrong.push(format!("{file}: names `crate::{target}`, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "the layers are crossed:\n{}", wrong.join("\n"));
    if let Some(circle) = find_circle(&imports) {
        panic!("modules import each other in a circle: {}", circle.join(" -> "));
    }
}

/// A circle in the graph, as the modules along it, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &BTreeMap<String, BTreeMap<String, String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|t| t.keys()) {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_scan_sees_crossings_and_circles() {
    assert_eq!(crate_paths("use crate::{app::AppState, owner};"), ["app", "owner"]);
    assert_eq!(crate_paths("let x = crate::engine::Supervisor::new(); hellas_crate::x"), ["engine"]);
    let graph: BTreeMap<String, BTreeMap<String, String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(from, to)| (from.to_string(), BTreeMap::from([(to.to_string(), String::new())])))
        .collect();
    assert_eq!(find_circle(&graph).unwrap(), ["a", "b", "c", "a"]);
}
