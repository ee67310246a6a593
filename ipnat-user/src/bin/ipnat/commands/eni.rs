//! `ipnat eni assign|unassign`: a NIC's secondary private addresses through the cloud's API.

use crate::cli::EniCommand;
use anyhow::Result;
use ipnat::config::Config;

pub fn run(action: EniCommand) -> Result<()> {
    use ipnat::providers::Assign;
    let (nic, assign, unassign, config, json) = match action {
        EniCommand::Assign {
            nic,
            count,
            address,
            config,
            json,
        } => {
            let what = match count {
                Some(n) => Assign::Count(n),
                None => Assign::List(address),
            };
            (nic, Some(what), Vec::new(), config, json)
        }
        EniCommand::Unassign {
            nic,
            address,
            config,
            json,
        } => (nic, None, address, config, json),
    };
    let config = Config::load(&config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(ipnat::providers::eni::run(&config, &nic, assign, unassign))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{}: {} private addresses before; limit {} ({})",
            out.nic, out.before, out.limit, out.limit_why
        );
        for a in &out.assigned {
            println!("assigned {a}");
        }
        for a in &out.unassigned {
            println!("unassigned {a}");
        }
    }
    Ok(())
}
