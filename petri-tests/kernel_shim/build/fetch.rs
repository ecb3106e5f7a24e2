//! Fetching `drivers/pci/controller/pci-hyperv.c` from Debian's `linux-source-*` packages.
//!
//! The driver is never committed: it is downloaded at build time with `apt-get download`, through
//! a private apt configuration (own source list, own package lists, own cache) that is derived
//! from the machine's own Debian sources with the suite name changed. Nothing system-wide is
//! read-modified-written; no mirror address lives in the repository. Only the one file is
//! extracted from the package's source tarball, and it is cached under the target directory,
//! together with the exact package version it came from.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One driver version: which Debian package holds it and in which suite.
pub(crate) struct Package {
    /// Short name used for file names and macros, e.g. `5.10`.
    pub(crate) key: &'static str,
    /// The Debian binary package that ships the kernel source tarball.
    pub(crate) name: &'static str,
    /// The Debian release (codename) whose archive carries the package.
    pub(crate) codename: &'static str,
}

/// The versions the crate builds: Debian 11's 5.10, Debian 12's 6.1 and Debian 13's 6.12.
pub(crate) const PACKAGES: [Package; 3] = [
    Package {
        key: "5.10",
        name: "linux-source-5.10",
        codename: "bullseye",
    },
    Package {
        key: "6.1",
        name: "linux-source-6.1",
        codename: "bookworm",
    },
    Package {
        key: "6.12",
        name: "linux-source-6.12",
        codename: "trixie",
    },
];

/// Where the driver file sits inside the kernel tree.
const DRIVER_PATH: &str = "drivers/pci/controller/pci-hyperv.c";

/// A fetched driver source.
pub(crate) struct Fetched {
    /// Path of the cached `pci-hyperv.c`.
    pub(crate) source: PathBuf,
    /// The exact Debian package version it was extracted from (e.g. `5.10.262-1`).
    pub(crate) version: String,
}

/// Returns the cached driver for `pkg`, fetching it first if the cache does not hold it.
pub(crate) fn fetch(cache: &Path, pkg: &Package) -> Result<Fetched, String> {
    let dir = cache.join(pkg.name);
    if let Some(found) = cached(&dir)? {
        return Ok(found);
    }
    fs::create_dir_all(cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    // Work in a private directory, then rename it into place: two build scripts running at the
    // same time (check and test profiles) never see a half-written cache entry.
    let work = cache.join(format!(".work-{}-{}", pkg.name, std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = fetch_into(&work, pkg);
    let outcome = result.and_then(|()| {
        let staged = work.join("out");
        match fs::rename(&staged, &dir) {
            Ok(()) => Ok(()),
            // Another build script won the race: its copy is as good as ours.
            Err(_) if cached(&dir)?.is_some() => Ok(()),
            Err(e) => Err(format!("cannot move {} into place: {e}", dir.display())),
        }
    });
    let _ = fs::remove_dir_all(&work);
    outcome?;
    cached(&dir)?.ok_or_else(|| format!("cache entry {} vanished", dir.display()))
}

/// Reads a complete cache entry (the version file is written last), if there is one.
fn cached(dir: &Path) -> Result<Option<Fetched>, String> {
    let source = dir.join("pci-hyperv.c");
    let version_file = dir.join("version");
    if !source.is_file() || !version_file.is_file() {
        return Ok(None);
    }
    let version = fs::read_to_string(&version_file)
        .map_err(|e| format!("cannot read {}: {e}", version_file.display()))?
        .trim()
        .to_string();
    Ok(Some(Fetched { source, version }))
}

/// Downloads the package into `work` and leaves `work/out/{pci-hyperv.c,version}`.
fn fetch_into(work: &Path, pkg: &Package) -> Result<(), String> {
    let apt = AptConfig::create(work, pkg.codename)?;
    let update = apt.run(&["update"], work).map_err(|e| {
        format!(
            "apt-get update for Debian suite `{}` failed (sources derived from {}): {e}",
            pkg.codename, apt.derived_from
        )
    })?;
    // apt-get update exits 0 even when no index could be fetched: check that some arrived.
    if !has_package_lists(&work.join("lists")) {
        return Err(format!(
            "apt-get update for Debian suite `{}` fetched no package lists (is Debian's package \
             registry reachable? sources derived from {}):\n{update}",
            pkg.codename, apt.derived_from
        ));
    }
    let dl = work.join("dl");
    mkdir(&dl)?;
    apt.run(&["download", pkg.name], &dl).map_err(|e| {
        format!(
            "apt-get download {} from Debian suite `{}` failed: {e}\n--- apt-get update said ---\n\
             {update}",
            pkg.name, pkg.codename
        )
    })?;
    let deb = single_deb(&dl)?;
    let version = deb_version(&deb)?;
    let out = work.join("out");
    mkdir(&out)?;
    extract_driver(&deb, pkg, &work.join("x"), &out.join("pci-hyperv.c"))?;
    // The version file is the completion marker: written last.
    fs::write(out.join("version"), format!("{version}\n"))
        .map_err(|e| format!("cannot write version file: {e}"))?;
    Ok(())
}

/// The private apt configuration: command-line options pointing apt at our own files only.
struct AptConfig {
    options: Vec<String>,
    derived_from: String,
}

impl AptConfig {
    /// Writes a deb822 source file for `codename` derived from the machine's own sources.
    fn create(work: &Path, codename: &str) -> Result<Self, String> {
        let machine = machine_codename()?;
        let (stanzas, derived_from) = machine_sources()?;
        let mut text = String::new();
        for stanza in &stanzas {
            if let Some(rewritten) = stanza.for_suite(&machine, codename) {
                text.push_str(&rewritten);
                text.push('\n');
            }
        }
        if text.is_empty() {
            return Err(format!(
                "no enabled Debian `deb` source for this machine's release `{machine}` in \
                 {derived_from}; cannot derive one for `{codename}`"
            ));
        }
        let parts = work.join("sources.list.d");
        let lists = work.join("lists");
        let cache = work.join("cache");
        for dir in [
            parts.clone(),
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            mkdir(&dir)?;
        }
        write(&parts.join("kernel-shim.sources"), &text)?;
        let empty_list = work.join("sources.list");
        write(&empty_list, "")?;
        let options = [
            format!("Dir::Etc::sourcelist={}", empty_list.display()),
            format!("Dir::Etc::sourceparts={}", parts.display()),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            "Acquire::Languages=none".to_string(),
            "APT::Get::List-Cleanup=false".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Self {
            options,
            derived_from,
        })
    }

    /// Runs `apt-get -q OPTIONS ARGS` in `cwd`; returns its output, or on failure its status
    /// and output.
    fn run(&self, args: &[&str], cwd: &Path) -> Result<String, String> {
        let output = Command::new("apt-get")
            .arg("-q")
            .args(&self.options)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run apt-get (is this a Debian machine?): {e}"))?;
        if output.status.success() {
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        } else {
            Err(format!(
                "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

/// Whether apt left at least one `..._Packages` index in its lists directory.
fn has_package_lists(lists: &Path) -> bool {
    fs::read_dir(lists).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.contains("_Packages"))
        })
    })
}

/// `VERSION_CODENAME` from `/etc/os-release`.
fn machine_codename() -> Result<String, String> {
    let text = fs::read_to_string("/etc/os-release")
        .map_err(|e| format!("cannot read /etc/os-release: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "no VERSION_CODENAME in /etc/os-release".to_string())
}

/// One apt source entry as deb822 fields (name, value); values may span lines.
struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The same entry for `target`: suites of the machine's release (`bookworm`,
    /// `bookworm-security`, ...) renamed (`bullseye`, `bullseye-security`, ...); other suites
    /// and disabled or source-only entries are dropped.
    fn for_suite(&self, machine: &str, target: &str) -> Option<String> {
        if self
            .get("Enabled")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
        {
            return None;
        }
        if !self.get("Types")?.split_whitespace().any(|t| t == "deb") {
            return None;
        }
        let suites: Vec<String> = self
            .get("Suites")?
            .split_whitespace()
            .filter_map(|s| {
                if s == machine {
                    Some(target.to_string())
                } else {
                    s.strip_prefix(machine)
                        .filter(|rest| rest.starts_with('-'))
                        .map(|rest| format!("{target}{rest}"))
                }
            })
            .collect();
        if suites.is_empty() {
            return None;
        }
        let mut out = String::from("Types: deb\n");
        out.push_str(&format!("Suites: {}\n", suites.join(" ")));
        for (k, v) in &self.fields {
            if ["Types", "Suites", "Enabled"]
                .iter()
                .any(|n| k.eq_ignore_ascii_case(n))
            {
                continue;
            }
            let mut lines = v.lines();
            out.push_str(&format!("{k}: {}\n", lines.next().unwrap_or("")));
            for line in lines {
                out.push_str(&format!(" {line}\n"));
            }
        }
        Some(out)
    }
}

/// All entries of `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`.
fn machine_sources() -> Result<(Vec<Stanza>, String), String> {
    let mut stanzas = Vec::new();
    let mut files = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if main.is_file() {
        files.push(main.to_path_buf());
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        parts.sort();
        files.extend(parts);
    }
    let mut read = Vec::new();
    for file in files {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "list" && ext != "sources" {
            continue;
        }
        let text = fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if ext == "sources" {
            stanzas.extend(parse_deb822(&text));
        } else {
            stanzas.extend(text.lines().filter_map(parse_one_line));
        }
        read.push(file.display().to_string());
    }
    let derived_from = if read.is_empty() {
        "/etc/apt (no source files found)".to_string()
    } else {
        read.join(", ")
    };
    Ok((stanzas, derived_from))
}

/// Parses deb822 stanzas (blank-line separated; `#` comments; continuation lines start with a
/// space).
fn parse_deb822(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !fields.is_empty() {
                stanzas.push(Stanza {
                    fields: std::mem::take(&mut fields),
                });
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !fields.is_empty() {
        stanzas.push(Stanza { fields });
    }
    stanzas
}

/// Parses a one-line entry `deb [opt=val ...] URI SUITE COMPONENT...`.
fn parse_one_line(line: &str) -> Option<Stanza> {
    let line = line.split('#').next()?.trim();
    let rest = line.strip_prefix("deb ")?.trim();
    let mut fields = vec![("Types".to_string(), "deb".to_string())];
    let rest = if let Some(opts) = rest.strip_prefix('[') {
        let (opts, rest) = opts.split_once(']')?;
        for opt in opts.split_whitespace() {
            let (k, v) = opt.split_once('=')?;
            let name = match k {
                "signed-by" => "Signed-By",
                "arch" => "Architectures",
                "trusted" => "Trusted",
                _ => continue,
            };
            fields.push((name.to_string(), v.to_string()));
        }
        rest.trim()
    } else {
        rest
    };
    let mut words = rest.split_whitespace();
    fields.push(("URIs".to_string(), words.next()?.to_string()));
    fields.push(("Suites".to_string(), words.next()?.to_string()));
    let components: Vec<&str> = words.collect();
    fields.push(("Components".to_string(), components.join(" ")));
    Some(Stanza { fields })
}

/// The one `.deb` that `apt-get download` left in `dir`.
fn single_deb(dir: &Path) -> Result<PathBuf, String> {
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "expected exactly one .deb in {}, found {}",
            dir.display(),
            debs.len()
        )),
    }
}

/// The package version recorded in the `.deb`'s control file.
fn deb_version(deb: &Path) -> Result<String, String> {
    let output = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Version")
        .output()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || version.is_empty() {
        return Err(format!(
            "dpkg-deb -f {} Version failed: {}",
            deb.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(version)
}

/// Streams `dpkg-deb --fsys-tarfile DEB | tar -xO ./usr/src/NAME.tar.xz | tar -xJ --wildcards
/// '*/drivers/...'` into `scratch`, then moves the one file to `dest`.
fn extract_driver(deb: &Path, pkg: &Package, scratch: &Path, dest: &Path) -> Result<(), String> {
    mkdir(scratch)?;
    let inner = format!("./usr/src/{}.tar.xz", pkg.name);
    let mut fsys = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    let fsys_out = fsys.stdout.take().ok_or("dpkg-deb has no stdout")?;
    let mut member = Command::new("tar")
        .args(["-xO", &inner])
        .stdin(Stdio::from(fsys_out))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let member_out = member.stdout.take().ok_or("tar has no stdout")?;
    let mut unpack = Command::new("tar")
        .args(["-xJ", "--wildcards", &format!("*/{DRIVER_PATH}")])
        .current_dir(scratch)
        .stdin(Stdio::from(member_out))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let mut unpack_err = String::new();
    if let Some(mut e) = unpack.stderr.take() {
        let _ = e.read_to_string(&mut unpack_err);
    }
    let statuses = [
        ("dpkg-deb --fsys-tarfile", fsys.wait()),
        ("tar -xO", member.wait()),
        ("tar -xJ", unpack.wait()),
    ];
    for (what, status) in statuses {
        let status = status.map_err(|e| format!("{what}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "extracting {DRIVER_PATH} from {} failed: {what} {status} {unpack_err}",
                deb.display()
            ));
        }
    }
    let found = find_file(scratch, "pci-hyperv.c")
        .ok_or_else(|| format!("{DRIVER_PATH} not found in {}", deb.display()))?;
    fs::rename(&found, dest).map_err(|e| format!("cannot move {}: {e}", found.display()))
}

/// Depth-first search for a file called `name` under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

fn mkdir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = "\
Types: deb
# a comment
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://other.invalid/node
Suites: nodistro
Components: main

Types: deb-src
URIs: http://mirror.invalid/debian
Suites: bookworm
Components: main

Enabled: no
Types: deb
URIs: http://off.invalid/debian
Suites: bookworm
Components: main
";

    /// The machine's Debian entries are renamed to the target release, keeping URIs, keys,
    /// components and the -updates/-security suffixes; other suites, deb-src and disabled
    /// entries are dropped.
    #[test]
    fn machine_sources_are_renamed_to_the_target_suite() {
        let out: Vec<String> = parse_deb822(MACHINE)
            .iter()
            .filter_map(|s| s.for_suite("bookworm", "bullseye"))
            .collect();
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(out[0].contains("Suites: bullseye bullseye-updates\n"));
        assert!(out[0].contains("URIs: http://mirror.invalid/debian\n"));
        assert!(out[0].contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
        assert!(out[1].contains("Suites: bullseye-security\n"));
        assert!(
            !out.iter()
                .any(|s| s.contains("nodistro") || s.contains("off.invalid"))
        );
    }

    /// A one-line entry keeps its signed-by option and components.
    #[test]
    fn one_line_entries_parse() {
        let s = parse_one_line(
            "deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib",
        )
        .unwrap();
        let out = s.for_suite("bookworm", "bullseye").unwrap();
        assert!(out.contains("Suites: bullseye\n"));
        assert!(out.contains("Signed-By: /k.gpg\n"));
        assert!(out.contains("Architectures: amd64\n"));
        assert!(out.contains("Components: main contrib\n"));
        assert!(parse_one_line("deb-src http://m.invalid/debian bookworm main").is_none());
        assert!(parse_one_line("# deb http://m.invalid/debian bookworm main").is_none());
    }

    /// Package keys map to the shim's version macro.
    #[test]
    fn package_keys_are_known() {
        let keys: Vec<&str> = PACKAGES.iter().map(|p| p.key).collect();
        assert_eq!(keys, ["5.10", "6.1", "6.12"]);
    }
}
