//! Sysctls ipnat raises (rp_filter, arp_ignore/arp_announce, promote_secondaries), each
//! recorded with the value it had and restored by `ipnat down`.

use super::*;

const SYSCTLS: &str = "sysctl.json";

/// sysctl key -> value before ipnat changed it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Changed {
    pub sysctls: BTreeMap<String, String>,
}

/// The /proc/sys file of a sysctl key in dotted notation. An interface's settings
/// (`net.ipv4.conf.<iface>.<name>`) keep the interface's name whole: a VLAN's `eth0.100` is
/// the directory `conf/eth0.100`, not `conf/eth0/100` (setting names hold no dot).
pub fn proc_path(key: &str) -> PathBuf {
    let mut path = PathBuf::from("/proc/sys");
    if let Some((iface, name)) = key
        .strip_prefix("net.ipv4.conf.")
        .and_then(|rest| rest.rsplit_once('.'))
    {
        path.extend(["net", "ipv4", "conf", iface, name]);
    } else {
        path.extend(key.split('.'));
    }
    path
}

/// A sysctl's value, by its dotted key.
pub fn read(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(proc_path(key))?.trim().to_owned())
}

fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(proc_path(key), value)
}

fn load(pin_path: &Path) -> Changed {
    records(pin_path)
        .read(SYSCTLS)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The one rule of every sysctl ipnat changes: sets `net.ipv4.conf.<iface>.<name>` to `to`
/// where `needs` says so of its effective value (the larger of `all`'s and the interface's),
/// recording the old value in `changed` (an old value recorded by an earlier run is kept).
/// What it changed now, as (key, old value).
fn set_where(
    changed: &mut Changed,
    iface: &str,
    name: &str,
    to: u8,
    needs: impl Fn(u8) -> bool,
) -> std::io::Result<Option<(String, String)>> {
    let all: u8 = read(&format!("net.ipv4.conf.all.{name}"))?
        .parse()
        .unwrap_or(0);
    let key = format!("net.ipv4.conf.{iface}.{name}");
    let old = read(&key)?;
    if !needs(all.max(old.parse().unwrap_or(0))) {
        return Ok(None);
    }
    write(&key, &to.to_string())?;
    changed
        .sysctls
        .entry(key.clone())
        .or_insert_with(|| old.clone());
    Ok(Some((key, old)))
}

/// [`set_where`] on each of `ifaces`, saved once.
fn set_each(
    ifaces: &[String],
    settings: &[(&str, u8, fn(u8) -> bool)],
    pin_path: &Path,
) -> std::io::Result<Vec<(String, String)>> {
    let mut changed = load(pin_path);
    let mut now = Vec::new();
    for &(name, to, needs) in settings {
        for iface in ifaces {
            now.extend(set_where(&mut changed, iface, name, to, needs)?);
        }
    }
    save(pin_path, &changed)?;
    Ok(now)
}

/// Makes reverse-path filtering loose (2) on `ifaces` where it is strict (1); returns what it
/// changed now as (key, old value).
pub fn loosen_rp_filter(
    ifaces: &[String],
    pin_path: &Path,
) -> std::io::Result<Vec<(String, String)>> {
    set_each(ifaces, &[("rp_filter", 2, |v| v == 1)], pin_path)
}

/// Raises `promote_secondaries` to 1 on `iface` where its effective value (the larger of `all`
/// and the interface's) is 0, recording the old value. Without it, removing the primary
/// address of a subnet deletes every secondary address of that subnet with it: an address
/// ipnat added and later removes would take the admin's own addresses along. Called before
/// ipnat adds an address; `ipnat down` restores it after removing the addresses.
pub fn promote_secondaries(
    iface: &str,
    pin_path: &Path,
) -> std::io::Result<Option<(String, String)>> {
    let settings = [("promote_secondaries", 1, (|v| v == 0) as fn(u8) -> bool)];
    Ok(set_each(&[iface.to_owned()], &settings, pin_path)?.pop())
}

/// Host orientation: the public addresses live on `lo`, and no neighbour may learn them from
/// this host: on each of `ifaces`, ARP requests are answered only for addresses of that
/// interface (`arp_ignore` 1) and ARP requests go out with the interface's own address as
/// their source (`arp_announce` 2). Raises each where its effective value (the larger of
/// `all` and the interface's) is lower; returns what it changed now as (key, old value).
pub fn quiet_arp(ifaces: &[String], pin_path: &Path) -> std::io::Result<Vec<(String, String)>> {
    set_each(
        ifaces,
        &[("arp_ignore", 1, |v| v < 1), ("arp_announce", 2, |v| v < 2)],
        pin_path,
    )
}

fn save(pin_path: &Path, changed: &Changed) -> std::io::Result<()> {
    if !changed.sysctls.is_empty() {
        records(pin_path)
            .write(SYSCTLS, &serde_json::to_string_pretty(changed)?)
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// What ipnat changed on the host, still in force.
pub fn changed(pin_path: &Path) -> Changed {
    load(pin_path)
}

/// Puts back every value ipnat changed and forgets them; returns (key, restored value).
pub fn restore(pin_path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let changed = load(pin_path);
    let mut done = Vec::new();
    for (key, old) in changed.sysctls {
        // An interface that is gone took its setting with it.
        if proc_path(&key).exists() {
            write(&key, &old)?;
            done.push((key, old));
        }
    }
    records(pin_path).remove(SYSCTLS);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths_keep_interface_names_whole() {
        for (key, path) in [
            (
                "net.ipv4.conf.eth0.100.rp_filter",
                "/proc/sys/net/ipv4/conf/eth0.100/rp_filter",
            ),
            (
                "net.ipv4.conf.all.arp_ignore",
                "/proc/sys/net/ipv4/conf/all/arp_ignore",
            ),
            ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        ] {
            assert_eq!(proc_path(key), PathBuf::from(path), "{key}");
        }
    }
}
