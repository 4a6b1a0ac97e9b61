//! The Containerfile's build stage names every input the build needs: its `COPY` sources, alone
//! in a fresh directory, build the `tollgate` binary with the locked dependencies, offline.
//!
//! No image registry is reachable where the tests run, so the image itself cannot be built; this
//! catches the common breakage instead (a new directory the build needs, such as a workspace
//! member, that the Containerfile does not copy).

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

#[test]
fn containerfile_build_stage_copies_every_build_input() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let containerfile = fs::read_to_string(repo.join("Containerfile")).expect("read Containerfile");
    let stage = build_stage(&containerfile);
    assert!(!stage.copies.is_empty(), "the build stage copies nothing");

    let context = tempfile::tempdir().expect("temp dir");
    let workdir = inside(context.path(), Path::new("/"), &stage.workdir);
    for copy in &stage.copies {
        let dest = inside(context.path(), &workdir, Path::new(&copy.dest));
        // As in a Dockerfile: a directory source copies its contents into the destination; with
        // several sources, or a destination ending in `/`, a file goes into that directory.
        let into_dir = copy.sources.len() > 1 || copy.dest.ends_with('/');
        for source in &copy.sources {
            let from = inside(repo, repo, Path::new(source));
            let to = if into_dir && !from.is_dir() {
                dest.join(from.file_name().expect("a COPY source names a file"))
            } else {
                dest.clone()
            };
            copy_path(&from, &to);
            println!(
                "copied {source} -> {}",
                to.strip_prefix(context.path()).unwrap_or(&to).display()
            );
        }
    }

    // The repository's own target directory: the dependencies are compiled once and reused, so
    // only tollgate itself is built again. The dev profile is enough: this checks the inputs,
    // not the release build.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--locked", "--offline", "--bin", "tollgate"])
        .current_dir(&workdir)
        .env("CARGO_TARGET_DIR", target_dir(repo))
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "cargo build in a directory holding only the Containerfile's COPY sources failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `FROM ... AS build` stage of a Containerfile: its working directory and its `COPY`s from
/// the build context.
#[derive(Debug)]
struct BuildStage {
    workdir: PathBuf,
    copies: Vec<CopyInstruction>,
}

/// One `COPY <src>... <dest>` from the build context.
#[derive(Debug)]
struct CopyInstruction {
    sources: Vec<String>,
    dest: String,
}

/// Reads the build stage: from `FROM ... AS build` to the next `FROM`. Only the shell form of
/// `COPY` is understood; anything else in the stage fails the test rather than being skipped.
fn build_stage(containerfile: &str) -> BuildStage {
    let mut stage: Option<BuildStage> = None;
    for instruction in instructions(containerfile) {
        let words: Vec<&str> = instruction.split_whitespace().collect();
        let Some((keyword, args)) = words.split_first() else {
            continue;
        };
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            if stage.is_some() {
                break;
            }
            let named_build = args.len() >= 3
                && args[args.len() - 2].eq_ignore_ascii_case("AS")
                && args[args.len() - 1] == "build";
            if named_build {
                stage = Some(BuildStage {
                    workdir: PathBuf::from("/"),
                    copies: Vec::new(),
                });
            }
            continue;
        }
        let Some(stage) = stage.as_mut() else {
            continue;
        };
        match keyword.as_str() {
            "WORKDIR" => stage.workdir = stage.workdir.join(args.join(" ")),
            "COPY" | "ADD" => {
                if args.iter().any(|a| a.starts_with("--from=")) {
                    continue;
                }
                let paths: Vec<&str> = args
                    .iter()
                    .copied()
                    .filter(|a| !a.starts_with("--"))
                    .collect();
                assert!(
                    paths.len() >= 2 && !paths[0].starts_with('['),
                    "unsupported {keyword} in the build stage: {instruction}"
                );
                let (dest, sources) = paths.split_last().expect("checked above");
                stage.copies.push(CopyInstruction {
                    sources: sources.iter().map(|s| (*s).to_owned()).collect(),
                    dest: (*dest).to_owned(),
                });
            }
            _ => {}
        }
    }
    stage.expect("the Containerfile has a `FROM ... AS build` stage")
}

/// The instructions of a Containerfile: comments dropped, `\` continuations joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `path` resolved against `base` (or `root` when absolute), refusing to leave `root`.
fn inside(root: &Path, base: &Path, path: &Path) -> PathBuf {
    let mut out = if path.is_absolute() {
        root.to_path_buf()
    } else {
        base.to_path_buf()
    };
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => assert!(
                out.pop() && out.starts_with(root),
                "{path:?} leaves {root:?}"
            ),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Copies a file, or a directory recursively, creating `to`'s parents.
fn copy_path(from: &Path, to: &Path) {
    let meta = fs::metadata(from).unwrap_or_else(|e| panic!("COPY source {from:?}: {e}"));
    if meta.is_dir() {
        fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {to:?}: {e}"));
        for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {from:?}: {e}")) {
            let entry = entry.unwrap_or_else(|e| panic!("read {from:?}: {e}"));
            copy_path(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {parent:?}: {e}"));
        }
        fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from:?} to {to:?}: {e}"));
    }
}

/// The target directory the repository's own builds use.
fn target_dir(repo: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo.join(dir),
        None => repo.join("target"),
    }
}
