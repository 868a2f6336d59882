//! Package sets pinned by lock files: `cargo xtask lock` resolves a set into its lock in
//! `image/` (name, version, architecture and sha256 of every .deb), and a tree is built by
//! installing exactly that set with mmdebstrap and checking every .deb it used against the lock.
//! Two sets are locked so: the image's root tree (`packages.lock`, from the spec) and the tools
//! tree the image is built with (`tools.lock`, from `tools.rs`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duct::cmd;

use super::spec::Spec;
use super::step::{self, file_sha256, Inputs, Progress};
use crate::cache;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

impl Locked {
    /// The name apt gives the downloaded .deb (an epoch's ':' is written '%3a').
    pub fn deb_file(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version.replace(':', "%3a"), self.architecture)
    }
}

#[derive(Debug)]
pub struct Lock {
    pub packages: Vec<Locked>,
}

/// A set of Debian packages to lock and install: where it comes from, and where its lock lives.
pub struct PackageSet {
    /// The lock's file name in `image/`.
    pub lock_file: &'static str,
    /// What the set makes ("the image"), and where it is asked for, for the lock's header.
    pub purpose: &'static str,
    pub source: &'static str,
    pub suite: String,
    pub components: Vec<String>,
    pub architecture: String,
    /// The packages asked for, sorted and without duplicates; the lock adds their dependencies.
    pub packages: Vec<String>,
    /// The oldest acceptable kernel, for a set that holds one (`kernel.min_version`).
    pub min_kernel: Option<String>,
    /// Where downloaded .debs are kept between runs, under `$HELLAS_CACHE/image`.
    pub debs_dir: &'static str,
}

impl PackageSet {
    /// The image's root tree, as the spec asks for it.
    pub fn root(spec: &Spec) -> PackageSet {
        PackageSet {
            lock_file: "packages.lock",
            purpose: "the image",
            source: "image/hellas.toml",
            suite: spec.debian.suite.clone(),
            components: spec.debian.components.clone(),
            architecture: spec.debian.architecture.clone(),
            packages: spec.package_list(),
            min_kernel: Some(spec.kernel.min_version.clone()),
            debs_dir: "debs",
        }
    }
}

impl Lock {
    pub fn parse(text: &str, path: &Path) -> Result<Lock> {
        let mut packages = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, version, architecture, sha256] = fields[..] else {
                bail!("{}:{}: expected 'name version architecture sha256', found {line:?}", path.display(), n + 1);
            };
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("{}:{}: {sha256:?} is not a sha256", path.display(), n + 1);
            }
            packages.push(Locked { name: name.into(), version: version.into(), architecture: architecture.into(), sha256: sha256.into() });
        }
        if packages.is_empty() {
            bail!("{} lists no packages: run `cargo xtask lock`", path.display());
        }
        Ok(Lock { packages })
    }

    pub fn load(path: &Path) -> Result<Lock> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading {} (make it with `cargo xtask lock`)", path.display()))?;
        Lock::parse(&text, path)
    }

    pub fn render(&self, set: &PackageSet) -> String {
        let mut out = format!(
            "# image/{}: the exact Debian packages of {}, written by `cargo xtask lock`\n\
             # from {}. Do not edit by hand. Columns: name version architecture sha256.\n",
            set.lock_file, set.purpose, set.source
        );
        out.push_str(&format!(
            "# suite {} ({}), {}; packages asked for: {}\n",
            set.suite,
            set.components.join(" "),
            set.architecture,
            set.packages.join(" ")
        ));
        for p in &self.packages {
            out.push_str(&format!("{} {} {} {}\n", p.name, p.version, p.architecture, p.sha256));
        }
        out
    }

    /// The kernel version of the locked `linux-image-<version>-amd64` package.
    pub fn kernel_version(&self) -> Option<String> {
        self.packages.iter().find_map(|p| {
            let rest = p.name.strip_prefix("linux-image-")?;
            let version = rest.strip_suffix("-amd64")?;
            version.chars().next()?.is_ascii_digit().then(|| version.to_string())
        })
    }

    /// Refuses a lock that lacks a package the set asks for (the set changed since the lock was
    /// written), or whose kernel is older than the set's minimum.
    pub fn check(&self, set: &PackageSet) -> Result<()> {
        for wanted in &set.packages {
            if !self.packages.iter().any(|p| &p.name == wanted) {
                bail!("image/{} has no '{wanted}', which {} asks for: run `cargo xtask lock`", set.lock_file, set.source);
            }
        }
        if let Some(min_kernel) = &set.min_kernel {
            let kernel = self.kernel_version().with_context(|| format!("image/{} holds no linux-image-<version>-amd64 package", set.lock_file))?;
            if version_key(&kernel) < version_key(min_kernel) {
                bail!("the locked kernel {kernel} is older than kernel.min_version {min_kernel}");
            }
        }
        Ok(())
    }
}

/// "6.18.4+deb14" → [6, 18, 4]: enough to order kernel versions.
fn version_key(version: &str) -> Vec<u64> {
    version.split(|c: char| !c.is_ascii_digit()).take_while(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0)).take(3).collect()
}

/// mmdebstrap arguments shared by lock and install: components, architecture, apt options, and
/// the hooks that keep downloaded .debs in `debs` (synced in before, out to `debs_out` after).
fn mmdebstrap_args(set: &PackageSet, apt_options: &[OsString], debs: &Path, debs_out: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--variant=apt".into(),
        format!("--components={}", set.components.join(",")).into(),
        format!("--architectures={}", set.architecture).into(),
        "--skip=essential/unlink".into(),
        r#"--setup-hook=mkdir -p "$1"/var/cache/apt/archives"#.into(),
        format!("--setup-hook=sync-in {} /var/cache/apt/archives", debs.display()).into(),
        format!("--customize-hook=sync-out /var/cache/apt/archives {}", debs_out.display()).into(),
    ];
    args.extend(apt_options.iter().cloned());
    args
}

/// Each set keeps its own .debs: the cache holds only those of the set's last run.
fn debs_dirs(set: &PackageSet) -> Result<(PathBuf, PathBuf)> {
    let debs = cache::root()?.join("image").join(set.debs_dir);
    let debs_out = cache::temp_path(&debs, "tmp");
    for dir in [&debs, &debs_out] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok((debs, debs_out))
}

/// `cargo xtask lock`: resolves a set's packages against the archive and writes its lock.
pub fn lock(set: &PackageSet, lock_path: &Path, progress: &Progress, apt_options: &[OsString]) -> Result<()> {
    let (debs, debs_out) = debs_dirs(set)?;
    let scratch = cache::temp_path(&cache::root()?.join("image/lock-tree"), "tmp");
    let result = (|| -> Result<Vec<Locked>> {
        let mut args = mmdebstrap_args(set, apt_options, &debs, &debs_out);
        args.push(format!("--include={}", set.packages.join(",")).into());
        args.extend([set.suite.clone().into(), scratch.clone().into()]);
        args.extend(super::mirror().map(OsString::from));
        progress.run(&format!("mmdebstrap (resolving the packages of image/{})", set.lock_file), cmd("mmdebstrap", args))?;
        let installed = installed_packages(&scratch)?;
        installed
            .into_iter()
            .map(|(name, (version, architecture))| {
                let mut p = Locked { name, version, architecture, sha256: String::new() };
                let deb = debs_out.join(p.deb_file());
                p.sha256 = file_sha256(&deb).with_context(|| format!("the .deb of {} {} was not kept", p.name, p.version))?;
                Ok(p)
            })
            .collect()
    })();
    cache::remove_any(&scratch)?;
    let packages = match result {
        Ok(packages) => packages,
        Err(e) => {
            cache::remove_any(&debs_out)?;
            return Err(e);
        }
    };
    cache::replace_dir(&debs_out, &debs)?;
    let lock = Lock { packages };
    lock.check(set)?;
    cache::write_if_changed(lock_path, lock.render(set).as_bytes(), 0o644)?;
    let kernel = lock.kernel_version().map(|k| format!(", kernel {k}")).unwrap_or_default();
    progress.note(&format!("lock: {} packages{kernel} → {}", lock.packages.len(), lock_path.display()));
    Ok(())
}

/// name → (version, architecture) of every package installed in `tree`.
fn installed_packages(tree: &Path) -> Result<BTreeMap<String, (String, String)>> {
    let admindir = tree.join("var/lib/dpkg");
    let out = cmd!("dpkg-query", format!("--admindir={}", admindir.display()), "-W", "-f=${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n")
        .read()
        .with_context(|| format!("listing the packages in {}", tree.display()))?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with("ii"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[1].to_string(), (f[2].to_string(), f[3].to_string())))
        })
        .collect())
}

/// Beside the tree: when its build started (seconds since the epoch).
const STARTED: &str = "started";

/// When the root tree at `tree` began to be built; files newer than that were made by the build.
pub fn rootfs_started(tree: &Path) -> Result<u64> {
    let path = tree.with_file_name(STARTED);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.trim().parse().with_context(|| format!("{} holds no time", path.display()))
}

/// The root tree: exactly the locked packages, every .deb checked, a systemd initrd with
/// dm-verity support built by dracut, and no caches.
pub fn rootfs(spec: &Spec, lock: &Lock, dracut_conf: &Path, progress: &Progress, apt_options: &[OsString]) -> Result<PathBuf> {
    let set = PackageSet::root(spec);
    let digest = Inputs::new("rootfs")
        .text("lock", &lock.render(&set))
        .text("mirror", &super::mirror().unwrap_or_default())
        .file("dracut.conf", dracut_conf)?
        .text("firmware", &format!("{:?}", spec.firmware))
        .text("recipe", "2")
        .finish();
    let dir = step::cached_dir(progress, "rootfs", &digest, |out| {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        fs::write(out.join(STARTED), started.to_string()).context("recording when the root tree's build started")?;
        let hooks: Vec<OsString> = vec![
            format!("--setup-hook=mkdir -p \"$1/etc/dracut.conf.d\" && cp {} \"$1/etc/dracut.conf.d/50-hellas.conf\"", dracut_conf.display()).into(),
            r#"--customize-hook=chroot "$1" sh -ec 'for k in /lib/modules/*; do k=${k##*/}; dracut --force --kver "$k" "/boot/initrd.img-$k"; done'"#.into(),
        ];
        install(&set, lock, &out.join("tree"), hooks, "root tree", progress, apt_options)?;
        super::firmware::trim(&out.join("tree"), &spec.firmware, progress)
    })?;
    Ok(dir.join("tree"))
}

/// Installs exactly the locked packages of `set` into `tree` with mmdebstrap (`hooks` added
/// after the package list) and checks every .deb it used against the lock.
pub fn install(set: &PackageSet, lock: &Lock, tree: &Path, hooks: Vec<OsString>, what: &str, progress: &Progress, apt_options: &[OsString]) -> Result<()> {
    let (debs, debs_out) = debs_dirs(set)?;
    let mut args = mmdebstrap_args(set, apt_options, &debs, &debs_out);
    let pinned: Vec<String> = lock.packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect();
    args.push(format!("--include={}", pinned.join(",")).into());
    args.extend(hooks);
    args.extend([set.suite.clone().into(), tree.into()]);
    args.extend(super::mirror().map(OsString::from));
    let built = progress.run(&format!("mmdebstrap ({what} from the lock)"), cmd("mmdebstrap", args)).with_context(|| {
        format!(
            "installing the locked package set failed; if a locked version is gone from the mirror, run `cargo xtask lock` \
             to refresh image/{} (or set HELLAS_MIRROR to a snapshot that has it)",
            set.lock_file
        )
    });
    let verified = built.and_then(|()| verify_debs(set, lock, &debs_out, tree));
    if let Err(e) = verified {
        cache::remove_any(&debs_out)?;
        return Err(e);
    }
    cache::replace_dir(&debs_out, &debs)
}

/// Every installed package is locked, at the locked version, from a .deb with the locked sha256.
fn verify_debs(set: &PackageSet, lock: &Lock, debs: &Path, tree: &Path) -> Result<()> {
    let installed = installed_packages(tree)?;
    for (name, (version, _)) in &installed {
        if !lock.packages.iter().any(|p| &p.name == name && &p.version == version) {
            bail!("{name} {version} was installed but is not in image/{}: run `cargo xtask lock`", set.lock_file);
        }
    }
    for p in &lock.packages {
        if !installed.contains_key(&p.name) {
            bail!("{} {} is locked but was not installed", p.name, p.version);
        }
        let deb = debs.join(p.deb_file());
        let actual = file_sha256(&deb).with_context(|| format!("the .deb of {} {} was not kept", p.name, p.version))?;
        if actual != p.sha256 {
            bail!("{} has sha256 {actual}, but image/{} says {}: the archive changed this version; refusing it", deb.display(), set.lock_file, p.sha256);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_kernel_version() {
        let text = "# c\nlinux-image-7.2.12+deb14-amd64 7.2.12-1 amd64 0000000000000000000000000000000000000000000000000000000000000000\n\
                    libc6 2.41-1 amd64 1111111111111111111111111111111111111111111111111111111111111111\n";
        let lock = Lock::parse(text, Path::new("l")).unwrap();
        assert_eq!(lock.packages.len(), 2);
        assert_eq!(lock.kernel_version().as_deref(), Some("7.2.12+deb14"));
        assert!(version_key("7.2.12+deb14") >= version_key("6.18.4"));
        assert!(version_key("6.18.3") < version_key("6.18.4"));
        assert_eq!(Locked { name: "a".into(), version: "1:2.0".into(), architecture: "all".into(), sha256: String::new() }.deb_file(), "a_1%3a2.0_all.deb");
        assert!(Lock::parse("a 1 amd64 nothex\n", Path::new("l")).unwrap_err().to_string().contains("l:1"));
    }

    /// A lock's header names the packages its set asked for: a set changed since the lock was
    /// written (a package added to the spec or to the tools tree) shows here.
    #[test]
    fn the_locks_are_up_to_date_with_their_sets() {
        let image = crate::workspace::root().unwrap().join("image");
        let spec = Spec::load(&image.join("hellas.toml")).unwrap();
        for set in [PackageSet::root(&spec), crate::image::tools::package_set()] {
            let path = image.join(set.lock_file);
            let text = fs::read_to_string(&path).unwrap();
            let lock = Lock::parse(&text, &path).unwrap();
            lock.check(&set).unwrap();
            assert!(lock.render(&set) == text, "image/{} is out of date: run `sudo -E cargo xtask lock`", set.lock_file);
        }
    }
}
