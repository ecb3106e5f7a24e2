//! The runtime's symbol table (`shim/SYMBOLS.md`) documents every import of the driver
//! objects.

use std::collections::BTreeSet;
use std::process::Command;

const SYMBOLS_MD: &str = include_str!("../shim/SYMBOLS.md");

/// Symbols named in the first column of the tables.
fn documented() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in SYMBOLS_MD.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let first_cell = row.split(" |").next().unwrap_or_default();
        for (i, part) in format!("`{first_cell}").split('`').enumerate() {
            if i % 2 == 1 && !part.is_empty() {
                names.insert(part.to_string());
            }
        }
    }
    names
}

fn imports(object: &str) -> BTreeSet<String> {
    let output = Command::new("nm")
        .arg("-u")
        .arg(object)
        .output()
        .expect("nm (binutils) is needed to list the driver's imports");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|s| s != "_GLOBAL_OFFSET_TABLE_")
        .collect()
}

/// Every symbol the 5.10, 6.1 and 6.12 driver objects import has a row in SYMBOLS.md, and the table
/// documents nothing the drivers do not import.
#[test]
fn every_driver_import_is_documented() {
    let documented = documented();
    let mut all = BTreeSet::new();
    for object in [
        env!("KERNEL_SHIM_DRIVER_OBJECT_510"),
        env!("KERNEL_SHIM_DRIVER_OBJECT_601"),
        env!("KERNEL_SHIM_DRIVER_OBJECT_612"),
    ] {
        let imports = imports(object);
        assert!(imports.len() > 70, "{object}: {imports:?}");
        let missing: Vec<_> = imports.difference(&documented).collect();
        assert!(missing.is_empty(), "{object}: undocumented {missing:?}");
        all.extend(imports);
    }
    let extra: Vec<_> = documented.difference(&all).collect();
    assert!(extra.is_empty(), "documented but not imported: {extra:?}");
}
