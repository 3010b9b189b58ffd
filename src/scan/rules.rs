//! The rules of [`Filter::Ignore`], as the `ignore` crate's walker applies them with the
//! options [`Walk::run`] gives it (`.gitignore` also outside a repository, `.git/info/exclude`,
//! the global excludes file, `.srcstoreignore`, the ignore files of the root's parents).
//!
//! A path is matched by each kind of file separately, nearest directory first, and the first
//! kind to have an opinion decides, in this order: `.srcstoreignore`, `.gitignore`,
//! `.git/info/exclude`, global. The root's parents are matched after the directories below it,
//! with the path under the root's canonical form. (Since no repository is required, the crate
//! never stops at a repository boundary.) Problems in an ignore file below the root are passed
//! over as the walker passes them over; in the root's parents they are reported as it reports
//! them. `scan::tests::rules_agree_with_the_ignore_crate` holds the two side by side.

use std::ffi::OsStr;
use std::fs;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::Error;

const CUSTOM: &str = ".srcstoreignore";

/// Which ignore files a directory listing showed.
#[derive(Default)]
pub(super) struct Found {
    custom: bool,
    git_ignore: bool,
    git_dir: bool,
}

impl Found {
    pub(super) fn note(&mut self, name: &[u8]) {
        match name {
            b".srcstoreignore" => self.custom = true,
            b".gitignore" => self.git_ignore = true,
            b".git" => self.git_dir = true,
            _ => {}
        }
    }

    fn all() -> Self {
        Found {
            custom: true,
            git_ignore: true,
            git_dir: true,
        }
    }
}

/// One directory's ignore files, and the directory above's.
pub(super) struct Level {
    custom: Gitignore,
    git_ignore: Gitignore,
    exclude: Gitignore,
    parent: Option<Arc<Level>>,
    /// This level or one above it has a rule.
    any: bool,
}

impl Level {
    fn empty() -> Self {
        Level {
            custom: Gitignore::empty(),
            git_ignore: Gitignore::empty(),
            exclude: Gitignore::empty(),
            parent: None,
            any: false,
        }
    }

    /// The rules of `dir`, whose listing showed `found`; the errors are returned apart.
    fn load(
        dir: &Path,
        found: &Found,
        parent: Option<Arc<Level>>,
        errors: &mut Vec<ignore::Error>,
    ) -> Level {
        let custom = if found.custom {
            create(dir, dir, CUSTOM, errors)
        } else {
            Gitignore::empty()
        };
        let git_ignore = if found.git_ignore {
            create(dir, dir, ".gitignore", errors)
        } else {
            Gitignore::empty()
        };
        let exclude = if found.git_dir {
            let git_type = dir.join(".git").metadata().ok().map(|m| m.file_type());
            match git_common_dir(dir, git_type) {
                Ok(git_dir) => create(dir, &git_dir, "info/exclude", errors),
                Err(e) => {
                    errors.extend(e);
                    Gitignore::empty()
                }
            }
        } else {
            Gitignore::empty()
        };
        let any = !custom.is_empty()
            || !git_ignore.is_empty()
            || !exclude.is_empty()
            || parent.as_ref().is_some_and(|p| p.any);
        Level {
            custom,
            git_ignore,
            exclude,
            parent,
            any,
        }
    }

    fn has_own_rules(&self) -> bool {
        !self.custom.is_empty() || !self.git_ignore.is_empty() || !self.exclude.is_empty()
    }
}

/// The crate's `create_gitignore`: the file `name` in `file_dir`, matched below `dir`; I/O
/// errors are passed over.
fn create(dir: &Path, file_dir: &Path, name: &str, errors: &mut Vec<ignore::Error>) -> Gitignore {
    let mut builder = GitignoreBuilder::new(dir);
    let path = file_dir.join(name);
    if path.exists() {
        if let Some(e) = builder.add(&path) {
            if !e.is_io() {
                errors.push(e);
            }
        }
    }
    builder.build().unwrap_or_else(|e| {
        errors.push(e);
        Gitignore::empty()
    })
}

/// The crate's `resolve_git_commondir`: where `info/exclude` is for the repository whose
/// `.git` is in `dir` (a linked worktree's `.git` is a file naming it).
fn git_common_dir(
    dir: &Path,
    git_type: Option<fs::FileType>,
) -> Result<PathBuf, Option<ignore::Error>> {
    let git_dir = dir.join(".git");
    if !git_type.is_some_and(|t| t.is_file()) {
        return Ok(git_dir);
    }
    let io = |e: std::io::Error, path: &Path| {
        Some(ignore::Error::WithPath {
            path: path.to_path_buf(),
            err: Box::new(ignore::Error::Io(e)),
        })
    };
    let first_line = |path: &Path| -> Result<Option<String>, std::io::Error> {
        let file = fs::File::open(path)?;
        std::io::BufReader::new(file).lines().next().transpose()
    };
    let line = match first_line(&git_dir) {
        Ok(Some(line)) => line,
        Ok(None) => return Err(None),
        Err(e) => return Err(io(e, &git_dir)),
    };
    let Some(real) = line.strip_prefix("gitdir: ") else {
        return Err(None);
    };
    let real = PathBuf::from(real);
    let common_file = real.join("commondir");
    let line = match fs::File::open(&common_file) {
        Err(_) => return Err(None),
        Ok(file) => match std::io::BufReader::new(file).lines().next() {
            Some(Ok(line)) => line,
            Some(Err(e)) => return Err(io(e, &common_file)),
            None => return Err(None),
        },
    };
    Ok(if line.starts_with('.') {
        real.join(line)
    } else {
        PathBuf::from(line)
    })
}

/// The rules of one scan.
pub(super) struct Rules {
    /// The project root as the walk names it; entries' paths start with it.
    root: PathBuf,
    /// The root's canonical form, for the parents' rules.
    canonical: Option<PathBuf>,
    /// The nearest of the root's parents, each holding the next one up.
    parents: Option<Arc<Level>>,
    global: Gitignore,
}

impl Rules {
    pub(super) fn new(root: &Path) -> Result<Self, Error> {
        let global = match std::env::current_dir() {
            Ok(cwd) => GitignoreBuilder::new(cwd).build_global().0,
            Err(_) => Gitignore::empty(),
        };
        // The parents' ignore files, from `/` down, as the crate's `add_parents` reads them:
        // without a listing, so every kind is looked for.
        let canonical = root.canonicalize().ok();
        let mut parents = None;
        if let Some(canonical) = &canonical {
            let mut errors = Vec::new();
            let mut chain: Vec<&Path> = canonical.ancestors().skip(1).collect();
            chain.reverse();
            for dir in chain {
                let level = Level::load(dir, &Found::all(), parents.clone(), &mut errors);
                parents = Some(Arc::new(level));
            }
            for e in errors {
                if let Some(e) = super::walk_error(e) {
                    return Err(e);
                }
            }
        }
        if !parents.as_ref().is_some_and(|p| p.any) {
            parents = None;
        }
        Ok(Rules {
            root: root.to_path_buf(),
            canonical,
            parents,
            global,
        })
    }

    /// The level above the root (nothing: the parents are matched apart).
    pub(super) fn top(&self) -> Arc<Level> {
        Arc::new(Level::empty())
    }

    /// The rules for the entries of `dir` (an absolute path below the root), whose listing
    /// showed `found`, below the directory whose rules are `parent`.
    pub(super) fn enter(&self, parent: &Arc<Level>, dir: &Path, found: &Found) -> Arc<Level> {
        if !(found.custom || found.git_ignore || found.git_dir) {
            return parent.clone();
        }
        // Problems below the root are passed over, as the walker does.
        let level = Level::load(dir, found, Some(parent.clone()), &mut Vec::new());
        if level.has_own_rules() {
            Arc::new(level)
        } else {
            parent.clone()
        }
    }

    /// Whether any rule could match below `level`.
    pub(super) fn any(&self, level: &Level) -> bool {
        level.any || self.parents.is_some() || !self.global.is_empty()
    }

    /// Whether the entry at `path` (`rel` below the root) is left out.
    pub(super) fn is_ignored(&self, level: &Level, path: &Path, rel: &[u8], is_dir: bool) -> bool {
        let mut found = [
            ignore::Match::None,
            ignore::Match::None,
            ignore::Match::None,
        ];
        match_levels(Some(level), path, is_dir, &mut found);
        if let (Some(parents), Some(canonical)) = (&self.parents, &self.canonical) {
            let path = canonical.join(OsStr::from_bytes(rel));
            match_levels(Some(parents), &path, is_dir, &mut found);
        }
        debug_assert!(path.starts_with(&self.root));
        let [custom, git, exclude] = found;
        custom
            .or(git)
            .or(exclude)
            .or(self.global.matched(path, is_dir))
            .is_ignore()
    }
}

/// Each kind's first opinion, nearest level first (kinds: `.srcstoreignore`, `.gitignore`,
/// `info/exclude`); kinds already decided are left alone.
fn match_levels<'a>(
    mut at: Option<&'a Level>,
    path: &Path,
    is_dir: bool,
    found: &mut [ignore::Match<&'a ignore::gitignore::Glob>; 3],
) {
    while let Some(l) = at.filter(|l| l.any) {
        for (m, rules) in found.iter_mut().zip([&l.custom, &l.git_ignore, &l.exclude]) {
            if m.is_none() {
                *m = rules.matched(path, is_dir);
            }
        }
        at = l.parent.as_deref();
    }
}
