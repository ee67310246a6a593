//! One module per command, each printing what it did; the work is the library's.

pub mod bench;
pub mod check;
pub mod down;
pub mod drain;
pub mod eni;
pub mod fleet;
pub mod import;
pub mod manpages;
pub mod map;
pub mod stats;
pub mod status;
pub mod steer;

/// Prints `items` as JSON (`--json`), else as a table: `header`, then one `row` per item.
pub fn print_list<T: serde::Serialize>(
    items: &[T],
    json: bool,
    header: String,
    row: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        println!("{header}");
        for i in items {
            println!("{}", row(i));
        }
    }
    Ok(())
}
