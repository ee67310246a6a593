//! The EC2 API (Query, SigV4, XML), as its documentation describes it.

use super::*;

/// A NIC as the fake EC2 API holds it.
#[derive(Clone, Debug)]
pub struct FakeEc2Nic {
    pub id: String,
    pub mac: String,
    pub vpc: String,
    /// Its subnet (addresses move only within one).
    pub subnet: String,
    pub instance: Option<String>,
    pub source_dest_check: bool,
    /// Primary first: (private address, associated EIP).
    pub addresses: Vec<(std::net::Ipv4Addr, Option<std::net::Ipv4Addr>)>,
    pub tags: Vec<(String, String)>,
}

impl FakeEc2Nic {
    fn xml(&self) -> String {
        let ips: String = self
            .addresses
            .iter()
            .enumerate()
            .map(|(i, (p, e))| {
                let assoc = e.map_or(String::new(), |e| {
                    format!("<association><publicIp>{e}</publicIp><ipOwnerId>amazon</ipOwnerId></association>")
                });
                format!("<item><privateIpAddress>{p}</privateIpAddress><primary>{}</primary>{assoc}</item>", i == 0)
            })
            .collect();
        let tags: String = self
            .tags
            .iter()
            .map(|(k, v)| format!("<item><key>{k}</key><value>{v}</value></item>"))
            .collect();
        let attachment = self.instance.as_ref().map_or(String::new(), |i| {
            format!("<attachment><instanceId>{i}</instanceId><deviceIndex>0</deviceIndex><status>attached</status></attachment>")
        });
        format!(
            "<item><networkInterfaceId>{}</networkInterfaceId><subnetId>{}</subnetId><vpcId>{}</vpcId><macAddress>{}</macAddress>\
             <privateIpAddress>{}</privateIpAddress><sourceDestCheck>{}</sourceDestCheck>{attachment}\
             <privateIpAddressesSet>{ips}</privateIpAddressesSet><tagSet>{tags}</tagSet></item>",
            self.id,
            self.subnet,
            self.vpc,
            self.mac,
            self.addresses
                .first()
                .map_or(String::new(), |a| a.0.to_string()),
            self.source_dest_check
        )
    }

    fn matches(&self, name: &str, values: &[String]) -> Option<bool> {
        Some(match name {
            "vpc-id" => values.contains(&self.vpc),
            "attachment.instance-id" => self.instance.as_ref().is_some_and(|i| values.contains(i)),
            "network-interface-id" => values.contains(&self.id),
            "subnet-id" => values.contains(&self.subnet),
            "addresses.private-ip-address" => self
                .addresses
                .iter()
                .any(|(a, _)| values.contains(&a.to_string())),
            "tag-key" => self.tags.iter().any(|(k, _)| values.contains(k)),
            _ => return None,
        })
    }
}

/// A fault the fake EC2 API injects into the next call of an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ec2Fault {
    /// `RequestLimitExceeded` (503), nothing done.
    Throttle,
    /// `InternalError` (500), nothing done.
    ServerError,
    /// Done, but answered `InternalError` (500), as a call whose answer was lost.
    DoneButError,
    /// Answered after this many milliseconds (done).
    Slow(u64),
}

/// What the fake EC2 API changed, when (for the tests' record of every move).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Move {
    pub at: std::time::Instant,
    /// e.g. `10.0.0.50 eni-a -> eni-b` or `rtb-1 0.0.0.0/0 -> eni-b`.
    pub what: String,
}

/// Called with the NICs and routes some time after each change (see [`FakeEc2::delay_ms`]):
/// a fake VPC moves its delivery then.
pub type Ec2Hook = Box<dyn Fn(&[FakeEc2Nic], &BTreeMap<(String, String), String>) + Send>;

/// A fake EC2 Query API serving DescribeNetworkInterfaces (2016-11-15), checking requests like
/// the real service: a known access key, the session token of temporary credentials, the
/// SigV4 signature over what was sent (recomputed with the official `aws-sigv4`), the region
/// of the credential scope; filters applied; answers in the documented XML and error shapes.
/// One NIC a page, with `NextToken`s, so that clients must follow them. It also moves
/// addresses (AssignPrivateIpAddresses with AllowReassignment, within a subnet), EIPs
/// (AssociateAddress, DescribeAddresses) and routes (ReplaceRoute), recording each move, with
/// injected faults.
#[derive(Clone)]
pub struct FakeEc2 {
    pub port: u16,
    region: String,
    pub nics: Arc<Mutex<Vec<FakeEc2Nic>>>,
    pub keys: Arc<Mutex<HashMap<String, AccessKey>>>,
    /// A canned answer for one page (1-based): (page, HTTP status, body).
    pub fail_page: Arc<Mutex<Option<(u64, u16, String)>>>,
    /// A page served wrong (see [`PageFault`]).
    pub page_fault: Arc<Mutex<Option<PageFault>>>,
    pub hang: Arc<AtomicBool>,
    /// Requests that passed the checks.
    pub calls: Arc<Mutex<usize>>,
    /// Instance type -> private addresses per NIC (DescribeInstanceTypes).
    pub types: Arc<Mutex<HashMap<String, u32>>>,
    /// Route tables: (table, destination) -> NIC.
    pub routes: Arc<Mutex<BTreeMap<(String, String), String>>>,
    /// EIPs by allocation id (`eipalloc-...`) -> public address; what each is associated
    /// with lives on the NICs' addresses.
    pub allocations: Arc<Mutex<BTreeMap<String, std::net::Ipv4Addr>>>,
    /// Faults for the next calls: (action, fault), first match used up.
    pub faults: Arc<Mutex<Vec<(String, Ec2Fault)>>>,
    /// Every move of an address or a route, in order.
    pub moves: Arc<Mutex<Vec<Ec2Move>>>,
    /// Every action called (signed correctly), in order, with when it arrived.
    pub actions: Arc<Mutex<Vec<(String, std::time::SystemTime)>>>,
    /// How long after a change the hooks see it (the VPC's delivery follows).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub hooks: Arc<Mutex<Vec<Ec2Hook>>>,
}

fn ec2_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fake-request</RequestID></Response>"
        ),
    )
}

fn ok_response(action: &str, extra: &str) -> (u16, String) {
    (
        200,
        format!(
            "<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId>{extra}<return>true</return></{action}Response>"
        ),
    )
}

impl FakeEc2 {
    pub fn start(ns: &Netns, region: &str) -> Self {
        let mut me = Self {
            port: 0,
            region: region.to_owned(),
            nics: Arc::default(),
            keys: Arc::default(),
            fail_page: Arc::default(),
            page_fault: Arc::default(),
            hang: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(Mutex::new(0)),
            types: Arc::default(),
            routes: Arc::default(),
            allocations: Arc::default(),
            faults: Arc::default(),
            moves: Arc::default(),
            actions: Arc::default(),
            delay_ms: Arc::default(),
            hooks: Arc::default(),
        };
        me.port = me.serve_in(ns);
        me
    }

    /// Serves the same API (the same state) on loopback in `ns` too; its port there.
    pub fn serve_in(&self, ns: &Netns) -> u16 {
        let port = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let p = port.clone();
        let me = self.clone();
        let served = serve(
            ns,
            self.hang.clone(),
            Arc::new(move |r: &Request| me.handle(r, p.load(Ordering::Relaxed))),
        );
        port.store(served, Ordering::Relaxed);
        served
    }

    /// Tells the hooks about the state as it is now, after the delay.
    fn changed(&self) {
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(me.delay_ms.load(Ordering::Relaxed)));
            let nics = me.nics.lock().unwrap().clone();
            let routes = me.routes.lock().unwrap().clone();
            for h in me.hooks.lock().unwrap().iter() {
                h(&nics, &routes);
            }
        });
    }

    fn record(&self, what: String) {
        self.moves.lock().unwrap().push(Ec2Move {
            at: std::time::Instant::now(),
            what,
        });
    }

    fn handle(&self, r: &Request, port: u16) -> (u16, String) {
        if let Err(e) = check_sigv4(r, port, &self.region, &self.keys.lock().unwrap()) {
            return e;
        }
        let form = parse_form(&r.body);
        if form.get("Version").map(String::as_str) != Some("2016-11-15") {
            return ec2_error(400, "InvalidParameterValue", "Version.");
        }
        *self.calls.lock().unwrap() += 1;
        let action = form.get("Action").cloned().unwrap_or_default();
        self.actions
            .lock()
            .unwrap()
            .push((action.clone(), std::time::SystemTime::now()));
        let fault = take_fault(&self.faults, &action);
        match fault {
            Some(Ec2Fault::Throttle) => {
                return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.");
            }
            Some(Ec2Fault::ServerError) => {
                return ec2_error(500, "InternalError", "An internal error has occurred.");
            }
            Some(Ec2Fault::Slow(ms)) => std::thread::sleep(Duration::from_millis(ms)),
            _ => {}
        }
        let answer = self.act(&action, &form);
        if fault == Some(Ec2Fault::DoneButError) {
            return ec2_error(500, "InternalError", "An internal error has occurred.");
        }
        answer
    }

    fn act(&self, action: &str, form: &BTreeMap<String, String>) -> (u16, String) {
        let listed = |key: &str| -> Vec<std::net::Ipv4Addr> {
            (1..)
                .map_while(|i| form.get(&format!("{key}.{i}")).and_then(|a| a.parse().ok()))
                .collect()
        };
        match action {
            "DescribeInstanceTypes" => {
                let name = form.get("InstanceType.1").cloned().unwrap_or_default();
                let Some(q) = self.types.lock().unwrap().get(&name).copied() else {
                    return ec2_error(
                        400,
                        "InvalidInstanceType",
                        &format!("The following supplied instance types do not exist: [{name}]"),
                    );
                };
                (
                    200,
                    format!(
                        "<DescribeInstanceTypesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId><instanceTypeSet><item><instanceType>{name}</instanceType><networkInfo><maximumNetworkInterfaces>3</maximumNetworkInterfaces><ipv4AddressesPerInterface>{q}</ipv4AddressesPerInterface></networkInfo></item></instanceTypeSet></DescribeInstanceTypesResponse>"
                    ),
                )
            }
            "AssignPrivateIpAddresses" | "UnassignPrivateIpAddresses" => {
                let id = form.get("NetworkInterfaceId").cloned().unwrap_or_default();
                let mut nics = self.nics.lock().unwrap();
                let Some(at) = nics.iter().position(|x| x.id == id) else {
                    return ec2_error(
                        400,
                        "InvalidNetworkInterfaceID.NotFound",
                        &format!("The networkInterface ID '{id}' does not exist"),
                    );
                };
                let listed = listed("PrivateIpAddress");
                if action == "UnassignPrivateIpAddresses" {
                    nics[at].addresses.retain(|(a, _)| !listed.contains(a));
                    drop(nics);
                    self.changed();
                    return ok_response(action, "");
                }
                let reassign = form.get("AllowReassignment").map(String::as_str) == Some("true");
                // Each listed address held by another NIC: moved with its EIP (same subnet,
                // AllowReassignment), else refused as the real service does.
                let mut moved = Vec::new();
                for a in &listed {
                    let Some(holder) = nics
                        .iter()
                        .position(|n| n.id != id && n.addresses.iter().any(|(x, _)| x == a))
                    else {
                        continue;
                    };
                    if !reassign {
                        return ec2_error(
                            400,
                            "PrivateIpAddressInUse",
                            &format!("Address {a} is in use."),
                        );
                    }
                    if nics[holder].subnet != nics[at].subnet {
                        return ec2_error(
                            400,
                            "InvalidParameterValue",
                            &format!("Address {a} does not fall within the subnet's address range"),
                        );
                    }
                    moved.push((*a, holder));
                }
                let mut new = Vec::new();
                for (a, holder) in &moved {
                    let i = nics[*holder]
                        .addresses
                        .iter()
                        .position(|(x, _)| x == a)
                        .unwrap();
                    let entry = nics[*holder].addresses.remove(i);
                    let from = nics[*holder].id.clone();
                    nics[at].addresses.push(entry);
                    self.record(format!("{a} {from} -> {id}"));
                    new.push(*a);
                }
                let fresh: Vec<std::net::Ipv4Addr> =
                    match form.get("SecondaryPrivateIpAddressCount") {
                        Some(k) => {
                            let o = nics[at].addresses[0].0.octets();
                            (100..250u8)
                                .map(|h| std::net::Ipv4Addr::new(o[0], o[1], o[2], h))
                                .filter(|a| {
                                    !nics.iter().any(|n| n.addresses.iter().any(|(x, _)| x == a))
                                })
                                .take(k.parse().unwrap_or(0))
                                .collect()
                        }
                        None => listed
                            .iter()
                            .filter(|a| !nics[at].addresses.iter().any(|(x, _)| x == *a))
                            .copied()
                            .collect(),
                    };
                nics[at].addresses.extend(fresh.iter().map(|a| (*a, None)));
                new.extend(fresh);
                drop(nics);
                self.changed();
                let items: String = new
                    .iter()
                    .map(|a| format!("<item><privateIpAddress>{a}</privateIpAddress></item>"))
                    .collect();
                ok_response(
                    action,
                    &format!(
                        "<networkInterfaceId>{id}</networkInterfaceId><assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet>"
                    ),
                )
            }
            "ReplaceRoute" => {
                let table = form.get("RouteTableId").cloned().unwrap_or_default();
                let dst = form
                    .get("DestinationCidrBlock")
                    .cloned()
                    .unwrap_or_default();
                let nic = form.get("NetworkInterfaceId").cloned().unwrap_or_default();
                if !self.nics.lock().unwrap().iter().any(|n| n.id == nic) {
                    return ec2_error(
                        400,
                        "InvalidNetworkInterfaceID.NotFound",
                        &format!("The networkInterface ID '{nic}' does not exist"),
                    );
                }
                let mut routes = self.routes.lock().unwrap();
                let Some(target) = routes.get_mut(&(table.clone(), dst.clone())) else {
                    return ec2_error(
                        400,
                        "InvalidRoute.NotFound",
                        &format!(
                            "no route with destination-cidr-block {dst} in route table {table}"
                        ),
                    );
                };
                if *target != nic {
                    self.record(format!("{table} {dst} {target} -> {nic}"));
                    *target = nic;
                }
                drop(routes);
                self.changed();
                ok_response(action, "")
            }
            "DescribeAddresses" => {
                let wanted: Vec<String> = (1..)
                    .map_while(|i| form.get(&format!("AllocationId.{i}")).cloned())
                    .collect();
                let allocations = self.allocations.lock().unwrap();
                let nics = self.nics.lock().unwrap();
                let mut items = String::new();
                for id in &wanted {
                    let Some(public) = allocations.get(id) else {
                        return ec2_error(
                            400,
                            "InvalidAllocationID.NotFound",
                            &format!("The allocation ID '{id}' does not exist"),
                        );
                    };
                    let assoc = nics.iter().find_map(|n| {
                        n.addresses
                            .iter()
                            .find(|(_, e)| *e == Some(*public))
                            .map(|(a, _)| (n, *a))
                    });
                    let assoc = assoc.map_or(String::new(), |(n, a)| {
                        format!(
                            "<associationId>eipassoc-{}</associationId><networkInterfaceId>{}</networkInterfaceId>                             <networkInterfaceOwnerId>123456789012</networkInterfaceOwnerId><privateIpAddress>{a}</privateIpAddress>{}",
                            &id[9..],
                            n.id,
                            n.instance.as_ref().map_or(String::new(), |i| format!("<instanceId>{i}</instanceId>"))
                        )
                    });
                    items.push_str(&format!(
                        "<item><publicIp>{public}</publicIp><allocationId>{id}</allocationId><domain>vpc</domain>{assoc}</item>"
                    ));
                }
                (
                    200,
                    format!(
                        "<DescribeAddressesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId><addressesSet>{items}</addressesSet></DescribeAddressesResponse>"
                    ),
                )
            }
            "AssociateAddress" => {
                let id = form.get("AllocationId").cloned().unwrap_or_default();
                let nic = form.get("NetworkInterfaceId").cloned().unwrap_or_default();
                let Some(public) = self.allocations.lock().unwrap().get(&id).copied() else {
                    return ec2_error(
                        400,
                        "InvalidAllocationID.NotFound",
                        &format!("The allocation ID '{id}' does not exist"),
                    );
                };
                let mut nics = self.nics.lock().unwrap();
                let Some(at) = nics.iter().position(|n| n.id == nic) else {
                    return ec2_error(
                        400,
                        "InvalidNetworkInterfaceID.NotFound",
                        &format!("The networkInterface ID '{nic}' does not exist"),
                    );
                };
                // Without PrivateIpAddress, the NIC's primary address.
                let private = match form.get("PrivateIpAddress") {
                    Some(p) => p.parse().ok(),
                    None => nics[at].addresses.first().map(|(a, _)| *a),
                };
                let Some(slot) =
                    private.and_then(|p| nics[at].addresses.iter().position(|(a, _)| *a == p))
                else {
                    return ec2_error(
                        400,
                        "InvalidParameterValue",
                        &format!(
                            "The private IP address is not assigned to the network interface {nic}"
                        ),
                    );
                };
                let private = nics[at].addresses[slot].0;
                let from = nics.iter().enumerate().find_map(|(i, n)| {
                    n.addresses
                        .iter()
                        .position(|(_, e)| *e == Some(public))
                        .map(|j| (i, j))
                });
                if from == Some((at, slot)) {
                    // Idempotent, as documented.
                    return ok_response(
                        action,
                        &format!("<associationId>eipassoc-{}</associationId>", &id[9..]),
                    );
                }
                // Reassociation is the default; `false` makes it fail if associated elsewhere.
                if from.is_some()
                    && form.get("AllowReassociation").map(String::as_str) == Some("false")
                {
                    return ec2_error(
                        400,
                        "Resource.AlreadyAssociated",
                        &format!(
                            "resource {id} is already associated with associate-id eipassoc-{}",
                            &id[9..]
                        ),
                    );
                }
                if nics[at].addresses[slot].1.is_some() {
                    return ec2_error(
                        400,
                        "InvalidParameterValue",
                        &format!(
                            "The private IP address {private} already has an Elastic IP address"
                        ),
                    );
                }
                let was = match from {
                    Some((i, j)) => {
                        nics[i].addresses[j].1 = None;
                        format!("{}/{}", nics[i].id, nics[i].addresses[j].0)
                    }
                    None => "nowhere".to_owned(),
                };
                nics[at].addresses[slot].1 = Some(public);
                self.record(format!("EIP {public} {was} -> {nic}/{private}"));
                drop(nics);
                self.changed();
                ok_response(
                    action,
                    &format!("<associationId>eipassoc-{}</associationId>", &id[9..]),
                )
            }
            "DescribeNetworkInterfaces" => self.describe(form),
            _ => ec2_error(
                400,
                "InvalidAction",
                "The action is not valid for this web service.",
            ),
        }
    }

    fn describe(&self, form: &BTreeMap<String, String>) -> (u16, String) {
        let mut filters = Vec::new();
        for i in 1.. {
            let Some(name) = form.get(&format!("Filter.{i}.Name")) else {
                break;
            };
            let values: Vec<String> = (1..)
                .map_while(|j| form.get(&format!("Filter.{i}.Value.{j}")).cloned())
                .collect();
            filters.push((name.clone(), values));
        }
        let mut selected = Vec::new();
        for nic in self.nics.lock().unwrap().iter() {
            let mut keep = true;
            for (name, values) in &filters {
                match nic.matches(name, values) {
                    Some(m) => keep &= m,
                    None => {
                        return ec2_error(
                            400,
                            "InvalidParameterValue",
                            &format!("The filter '{name}' is invalid"),
                        );
                    }
                }
            }
            if keep {
                selected.push(nic.xml());
            }
        }
        let page: u64 = form
            .get("NextToken")
            .and_then(|t| t.strip_prefix("page-"))
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        if let Some((fp, status, body)) = self.fail_page.lock().unwrap().clone()
            && fp == page
        {
            return (status, body);
        }
        let (item, next) = PageFault::serve(*self.page_fault.lock().unwrap(), page, &selected);
        let item = item.unwrap_or_default();
        let next = next
            .map(|t| format!("<nextToken>{t}</nextToken>"))
            .unwrap_or_default();
        (
            200,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeNetworkInterfacesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake-request</requestId><networkInterfaceSet>{item}</networkInterfaceSet>{next}</DescribeNetworkInterfacesResponse>"
            ),
        )
    }
}

/// Checks a request's SigV4 `Authorization` like EC2 does; the error response otherwise.
fn check_sigv4(
    r: &Request,
    port: u16,
    region: &str,
    keys: &HashMap<String, AccessKey>,
) -> Result<(), (u16, String)> {
    use aws_sigv4::{
        http_request::{SignableBody, SignableRequest, SigningSettings, sign},
        sign::v4,
    };
    let auth = r.header("authorization").unwrap_or_default();
    let field = |name: &str| {
        auth.split([' ', ','])
            .find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{name}="))
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    };
    let credential = field("Credential");
    let scope: Vec<&str> = credential.split('/').collect();
    if !auth.starts_with("AWS4-HMAC-SHA256 ") || scope.len() != 5 {
        return Err(ec2_error(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ));
    }
    let Some((secret, token)) = keys.get(scope[0]).cloned() else {
        return Err(ec2_error(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        ));
    };
    if scope[2] != region || scope[3] != "ec2" {
        return Err(ec2_error(
            403,
            "SignatureDoesNotMatch",
            &format!(
                "Credential should be scoped to a valid region, not '{}'.",
                scope[2]
            ),
        ));
    }
    if token.is_some() && r.header("x-amz-security-token") != token {
        return Err(ec2_error(
            401,
            "AuthFailure",
            "The security token included in the request is invalid.",
        ));
    }
    let date = r.header("x-amz-date").unwrap_or_default();
    let rfc3339 = if date.len() == 16 {
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &date[0..4],
            &date[4..6],
            &date[6..8],
            &date[9..11],
            &date[11..13],
            &date[13..15]
        )
    } else {
        String::new()
    };
    let Ok(time) = humantime::parse_rfc3339(&rfc3339) else {
        return Err(ec2_error(400, "MissingParameter", "X-Amz-Date."));
    };
    let creds = aws_credential_types::Credentials::new(scope[0], secret, token, None, "fake");
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let content_type = r.header("content-type").unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/");
    let headers = [("content-type", content_type.as_str())];
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(r.body.as_bytes()),
    )
    .unwrap();
    let expected = sign(signable, &params).unwrap().signature().to_owned();
    if expected != field("Signature") {
        return Err(ec2_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}
