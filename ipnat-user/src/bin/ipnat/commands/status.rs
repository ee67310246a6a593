//! `ipnat status`: what the running data plane is attached to, its tables and its last sync.

use anyhow::Result;

pub fn run(pin_path: &std::path::Path, json: bool) -> Result<()> {
    let st = ipnat::dataplane::status(&pin_path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.render());
    }
    Ok(())
}
