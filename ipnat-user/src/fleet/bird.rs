//! The routing daemon's view, read from bird's control socket (what `birdc show protocols`
//! prints): which of its protocols are up. bird's remote control protocol is line based: each
//! reply line starts with a four-digit code and `-` (more follows) or ` ` (the last line of that
//! code), a line starting with a space continues the previous code, and `0000` ends the reply.

use std::{collections::BTreeMap, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// `show protocols` lines: the protocol's name and whether its state is `up`.
const PROTOCOL_LINE: &str = "1002";

/// The state of bird's protocols, by name: whether each is `up`. Gives up after `timeout`.
pub async fn protocols(
    socket: &Path,
    timeout: Duration,
) -> std::io::Result<BTreeMap<String, bool>> {
    tokio::time::timeout(timeout, ask(socket))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "bird did not answer in time")
        })?
}

async fn ask(socket: &Path) -> std::io::Result<BTreeMap<String, bool>> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting: "0001 BIRD 2.0.12 ready."
    let hello = lines.next_line().await?.unwrap_or_default();
    if !hello.starts_with("0001") {
        return Err(std::io::Error::other(format!(
            "not bird's control socket (it said {hello:?})"
        )));
    }
    write.write_all(b"show protocols\n").await?;
    let mut text = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let end = line.starts_with("0000");
        text.push(line);
        if end {
            break;
        }
    }
    parse(&text)
}

/// The protocols in a `show protocols` reply.
pub fn parse(lines: &[String]) -> std::io::Result<BTreeMap<String, bool>> {
    let mut out = BTreeMap::new();
    let mut code = "";
    for line in lines {
        let rest = if let Some(rest) = line.strip_prefix(' ') {
            rest
        } else if line.len() >= 5 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
            code = &line[..4];
            if code.starts_with('8') || code.starts_with('9') {
                return Err(std::io::Error::other(format!(
                    "bird refused: {}",
                    &line[5..]
                )));
            }
            &line[5..]
        } else {
            return Err(std::io::Error::other(format!(
                "not a bird reply line: {line:?}"
            )));
        };
        if code == PROTOCOL_LINE {
            // Name, protocol, table, state, since (one or two words), info.
            let cols: Vec<&str> = rest.split_whitespace().collect();
            if cols.len() >= 4 {
                out.insert(cols[0].to_owned(), cols[3] == "up");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_protocols_is_read_by_state() {
        // As bird 2.0.12 answers on its control socket.
        let reply = [
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-device1    Device     ---        up     14:18:46.133  ",
            " ipnat      Kernel     master4    up     14:18:46.133  ",
            " outside    BGP        ---        up     14:18:50.511  Established   ",
            " inside     BGP        ---        start  14:18:46.133  Active        Socket: Connection refused",
            " bfd1       BFD        ---        up     14:18:46.133  ",
            "0000 ",
        ]
        .map(String::from);
        let p = parse(&reply).expect("parses");
        assert_eq!(p.get("outside"), Some(&true));
        assert_eq!(p.get("inside"), Some(&false));
        assert_eq!(p.get("ipnat"), Some(&true));
        assert_eq!(p.len(), 5);
        let refused = ["8001 Syntax error"].map(String::from);
        assert!(parse(&refused).is_err());
    }
}
