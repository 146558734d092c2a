//! Idle timeouts learned from what became of idle connections. Per
//! destination, the longest idle a connection was seen to survive (it sat
//! idle that long in one snapshot and heard from its peer in a later one)
//! and the shortest idle after which one was killed (`idle_kill_suspected`)
//! bracket the timeout of whatever forgets flows on that path.
//!
//! A destination is where a client connects (`10.0.0.2:5432`), or, for
//! connections accepted on a listening port, that port (`:8000`): clients
//! come from everywhere, the load balancer in front is the same.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    path::Path,
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    ip::canonical,
    policy::{Cidr, Rule, RuleSource},
    sockets::Socket,
    tcp::TcpState,
};

/// Idles shorter than this teach nothing worth a destination entry: every
/// busy connection would make one.
pub const MIN_IDLE_S: f64 = 0.5;
/// Destinations remembered at most; later ones are counted, not learned.
pub const MAX_DESTINATIONS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A client's path to this address and port.
    Remote(SocketAddr),
    /// Connections accepted on this local port.
    Inbound(u16),
}

impl Destination {
    pub fn of(local: SocketAddr, remote: SocketAddr, local_port_listening: bool) -> Self {
        if local_port_listening {
            Destination::Inbound(local.port())
        } else {
            Destination::Remote(SocketAddr::new(canonical(remote.ip()), remote.port()))
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Remote(a) => write!(f, "{a}"),
            Destination::Inbound(p) => write!(f, ":{p}"),
        }
    }
}

impl FromStr for Destination {
    type Err = crate::invalid::Invalid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use crate::invalid::Invalid;
        if let Some(p) = s.strip_prefix(':') {
            return p
                .parse()
                .map(Destination::Inbound)
                .map_err(|_| Invalid::malformed(s, "bad port"));
        }
        s.parse()
            .map(Destination::Remote)
            .map_err(|_| Invalid::not_a(s, "ADDR:PORT or :PORT"))
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What one destination taught so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Bracket {
    /// The longest idle a connection survived (lower bound), seconds.
    pub survived_s: Option<f64>,
    /// The shortest idle after which one was killed (upper bound), seconds.
    pub killed_s: Option<f64>,
    pub survivals: u64,
    pub kills: u64,
}

impl Bracket {
    /// Both bounds, when they agree (a survival longer than a kill means
    /// something else than one idle timeout is at work).
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match (self.survived_s, self.killed_s) {
            (Some(lo), Some(hi)) if lo < hi => Some((lo, hi)),
            _ => None,
        }
    }

    pub fn contradictory(&self) -> bool {
        matches!((self.survived_s, self.killed_s), (Some(lo), Some(hi)) if lo >= hi)
    }
}

/// One destination and its bracket, as saved and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    pub destination: Destination,
    #[serde(flatten)]
    pub bracket: Bracket,
}

/// The state file: versioned so that a later kato can refuse, not misread.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    learned: Vec<Learned>,
}

const STATE_VERSION: u32 = 1;
pub const STATE_FILE: &str = "learned.json";

/// A connection under watch: 16 bytes, since the agent watches every idle
/// connection of the host (the flow as a hash, its destination found
/// again from the socket when it teaches something).
struct Watch {
    flow: u64,
    idle_s: f64,
}

fn flow_id(s: &Socket) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (s.local, s.remote).hash(&mut h);
    h.finish()
}

#[derive(Default)]
pub struct Learner {
    brackets: BTreeMap<Destination, Bracket>,
    /// Connections idle long enough in the last snapshot to teach something
    /// if their peer is heard from again (kernel socket address -> watch).
    watching: HashMap<u64, Watch>,
    /// Kills waiting for their destination to show alive: the shortest
    /// silence each.
    candidates: HashMap<Destination, f64>,
    /// Destinations not learned because `MAX_DESTINATIONS` were known.
    pub overflow: u64,
    /// Changed since the last save.
    dirty: bool,
}

impl Learner {
    fn bracket(&mut self, dest: Destination) -> Option<&mut Bracket> {
        if !self.brackets.contains_key(&dest) && self.brackets.len() >= MAX_DESTINATIONS {
            self.overflow += 1;
            return None;
        }
        self.dirty = true;
        Some(self.brackets.entry(dest).or_default())
    }

    /// A reset or failed send after `idle_s` seconds of silence on a path
    /// whose timeout is not known: a kill only if the destination turns
    /// out alive (a dead peer never does), so it waits for the next
    /// snapshot to show a live connection to it.
    pub fn candidate(&mut self, dest: Destination, idle_s: f64) {
        if self.candidates.len() >= MAX_DESTINATIONS && !self.candidates.contains_key(&dest) {
            self.overflow += 1;
            return;
        }
        let c = self.candidates.entry(dest).or_insert(idle_s);
        *c = c.min(idle_s);
    }

    /// A suspected idle kill after `idle_s` seconds.
    pub fn killed(&mut self, dest: Destination, idle_s: f64) {
        if let Some(b) = self.bracket(dest) {
            b.kills += 1;
            b.killed_s = Some(b.killed_s.map_or(idle_s, |k| k.min(idle_s)));
        }
    }

    fn survived(&mut self, dest: Destination, idle_s: f64) {
        if let Some(b) = self.bracket(dest) {
            b.survivals += 1;
            b.survived_s = Some(b.survived_s.map_or(idle_s, |s| s.max(idle_s)));
        }
    }

    /// A full snapshot of the watched namespaces: a connection watched last
    /// time whose idle has since restarted survived the idle it had then.
    /// `listening` says whether a socket's local port is a listener's.
    pub fn snapshot<'a>(
        &mut self,
        sockets: impl Iterator<Item = &'a Socket>,
        listening: impl Fn(&Socket) -> bool,
    ) {
        let mut next = HashMap::with_capacity(self.watching.len());
        let before = std::mem::take(&mut self.watching);
        let mut alive: Vec<Destination> = vec![];
        for s in sockets {
            let Some(idle) = s.idle_s else { continue };
            if s.state != TcpState::Established {
                continue;
            }
            let flow = flow_id(s);
            let dest = Destination::of(s.local, s.remote, listening(s));
            // A connection to the destination that talked since the kill:
            // the peer is alive and reachable, the path forgot the old one.
            if self.candidates.get(&dest).is_some_and(|&k| idle < k) {
                alive.push(dest);
            }
            if let Some(w) = before.get(&s.sock).filter(|w| w.flow == flow) {
                if idle < w.idle_s {
                    self.survived(dest, w.idle_s);
                }
            }
            if idle < MIN_IDLE_S {
                continue;
            }
            // Only an idle longer than the known lower bound can teach more.
            if self
                .brackets
                .get(&dest)
                .and_then(|b| b.survived_s)
                .is_some_and(|lo| idle <= lo)
            {
                continue;
            }
            next.insert(s.sock, Watch { flow, idle_s: idle });
        }
        self.watching = next;
        for dest in alive {
            if let Some(k) = self.candidates.remove(&dest) {
                self.killed(dest, k);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Learned> + '_ {
        self.brackets.iter().map(|(d, b)| Learned {
            destination: *d,
            bracket: *b,
        })
    }

    /// Rules for risk, where both bounds exist and agree: the lower bound
    /// is the timeout (a keepalive that fits under it is known to be safe).
    pub fn rules(&self) -> Vec<Rule> {
        self.iter().filter_map(|l| l.rule()).collect()
    }

    /// Loads a saved state; a missing file is an empty one.
    pub fn load(dir: &crate::files::StateDir) -> Result<Self, StateError> {
        let learned = match dir.read(STATE_FILE, MAX_STATE)? {
            Some(bytes) => parse_state(&bytes, &dir.path().join(STATE_FILE))?,
            None => vec![],
        };
        Ok(Learner {
            brackets: learned
                .into_iter()
                .map(|l| (l.destination, l.bracket))
                .collect(),
            // Saved at the first chance: a state directory that cannot be
            // written is found at start, and doctor sees the agent ran.
            dirty: true,
            ..Learner::default()
        })
    }

    /// Saves when something changed (a new file renamed over the old).
    pub fn save(&mut self, dir: &crate::files::StateDir) -> Result<(), crate::files::FileError> {
        if !self.dirty {
            return Ok(());
        }
        let file = StateFile {
            version: STATE_VERSION,
            learned: self.iter().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("plain data serializes");
        dir.replace(STATE_FILE, &bytes)?;
        self.dirty = false;
        Ok(())
    }
}

impl Learned {
    pub fn rule(&self) -> Option<Rule> {
        let (lo, hi) = self.bracket.bounds()?;
        let (cidr, port) = match self.destination {
            Destination::Remote(a) => (Some(Cidr::host(a.ip())), Some(a.port())),
            Destination::Inbound(p) => (None, Some(p)),
        };
        Some(Rule {
            cidr,
            port,
            timeout: Duration::from_secs_f64(lo),
            text: format!("{}={lo:.1}s..{hi:.1}s", self.destination),
            source: RuleSource::Learned,
        })
    }
}

/// Why a saved state could not be read. Errors say where in the file,
/// never what it holds (it may not be kato's).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("{path}: not a kato state file (line {line}, column {column})")]
    NotState {
        path: std::path::PathBuf,
        line: usize,
        column: usize,
    },
    #[error("{path}: state version {found} (this kato reads {STATE_VERSION})")]
    Version {
        path: std::path::PathBuf,
        found: u32,
    },
}

/// A state file at most: [`MAX_DESTINATIONS`] entries take ~300 KB.
pub const MAX_STATE: u64 = 4 << 20;

/// A saved state's entries (for `kato doctor`, reading what the agent
/// wrote); a missing file holds none.
pub fn read_state(path: &Path) -> Result<Vec<Learned>, StateError> {
    match crate::files::read_capped(path, MAX_STATE) {
        Ok(bytes) => parse_state(&bytes, path),
        Err(crate::files::FileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(vec![])
        }
        Err(e) => Err(e.into()),
    }
}

/// A state file's entries, at most [`MAX_DESTINATIONS`].
fn parse_state(bytes: &[u8], path: &Path) -> Result<Vec<Learned>, StateError> {
    let f: StateFile = serde_json::from_slice(bytes).map_err(|e| StateError::NotState {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
    })?;
    if f.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: f.version,
        });
    }
    let mut learned = f.learned;
    learned.truncate(MAX_DESTINATIONS);
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::tests::record;

    fn conn(sock: u64, remote: &str, idle: f64) -> Socket {
        Socket {
            sock,
            remote: remote.parse().unwrap(),
            idle_s: Some(idle),
            ..Socket::from_record(&record(), 250, None).unwrap()
        }
    }

    #[test]
    fn survivals_and_kills_bracket_a_timeout() {
        let mut l = Learner::default();
        let dest: Destination = "10.0.0.2:5432".parse().unwrap();
        // Idle 1.2 s, then heard from: survived 1.2 s.
        l.snapshot([conn(1, "10.0.0.2:5432", 1.2)].iter(), |_| false);
        l.snapshot([conn(1, "10.0.0.2:5432", 0.1)].iter(), |_| false);
        assert_eq!(l.iter().next().unwrap().bracket.survived_s, Some(1.2));
        assert!(l.rules().is_empty(), "one bound is no bracket");
        // Still idle, growing: nothing learned yet.
        l.snapshot([conn(2, "10.0.0.2:5432", 2.0)].iter(), |_| false);
        l.snapshot([conn(2, "10.0.0.2:5432", 2.5)].iter(), |_| false);
        // Killed after 5 s and after 4 s: the shorter is the bound.
        l.killed(dest, 5.0);
        l.killed(dest, 4.0);
        let b = l.iter().next().unwrap().bracket;
        assert_eq!(
            (b.survived_s, b.killed_s, b.survivals, b.kills),
            (Some(1.2), Some(4.0), 1, 2)
        );
        let r = &l.rules()[0];
        assert_eq!(
            (r.timeout, r.text.as_str(), r.source),
            (
                Duration::from_secs_f64(1.2),
                "10.0.0.2:5432=1.2s..4.0s",
                RuleSource::Learned
            )
        );
        // The rule matches that destination only.
        assert!(crate::policy::Policy {
            rules: l.rules(),
            ..Default::default()
        }
        .lookup(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:5432".parse().unwrap()
        )
        .is_some());
    }

    #[test]
    fn a_reused_kernel_address_teaches_nothing_and_contradictions_are_not_rules() {
        let mut l = Learner::default();
        l.snapshot([conn(1, "10.0.0.2:80", 3.0)].iter(), |_| false);
        l.snapshot([conn(1, "10.0.0.3:80", 0.1)].iter(), |_| false);
        assert_eq!(l.iter().count(), 0);
        let d = "10.0.0.2:80".parse().unwrap();
        l.killed(d, 2.0);
        l.snapshot([conn(1, "10.0.0.2:80", 3.0)].iter(), |_| false);
        l.snapshot([conn(1, "10.0.0.2:80", 0.0)].iter(), |_| false);
        let b = l.iter().next().unwrap().bracket;
        assert!(b.contradictory(), "{b:?}");
        assert!(l.rules().is_empty());
    }

    #[test]
    fn accepted_connections_learn_for_their_port_and_destinations_are_bounded() {
        let mut l = Learner::default();
        l.snapshot([conn(1, "10.9.9.9:40000", 2.0)].iter(), |_| true);
        l.snapshot([conn(1, "10.9.9.9:40000", 0.0)].iter(), |_| true);
        assert_eq!(l.iter().next().unwrap().destination.to_string(), ":40000");
        for i in 0..MAX_DESTINATIONS as u16 + 5 {
            l.killed(Destination::Inbound(i + 1000), 9.0);
        }
        assert_eq!(l.iter().count(), MAX_DESTINATIONS);
        assert!(l.overflow >= 5);
    }

    #[test]
    fn state_round_trips_and_refuses_other_versions() {
        let path = std::env::temp_dir().join(format!("kato-learned-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = crate::files::StateDir::open(&path).unwrap();
        assert!(
            Learner::load(&dir).unwrap().iter().next().is_none(),
            "no file yet"
        );
        let mut l = Learner::default();
        l.killed("[2001:db8::1]:443".parse().unwrap(), 7.5);
        l.save(&dir).unwrap();
        let back = Learner::load(&dir).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            l.iter().collect::<Vec<_>>()
        );
        assert_eq!(read_state(&path.join(STATE_FILE)).unwrap().len(), 1);
        std::fs::write(path.join(STATE_FILE), r#"{"version":9,"learned":[]}"#).unwrap();
        assert!(Learner::load(&dir)
            .err()
            .unwrap()
            .to_string()
            .contains("version 9"));
        // Someone else's JSON: where, never what.
        std::fs::write(path.join(STATE_FILE), r#"{"password":"hunter2"}"#).unwrap();
        let e = Learner::load(&dir).err().unwrap().to_string();
        assert!(
            e.contains("not a kato state file") && !e.contains("hunter2"),
            "{e}"
        );
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_loaded_state_keeps_at_most_the_cap() {
        let entry = |i: u32| {
            format!(
                r#"{{"destination":":{}","survived_s":1.0,"killed_s":2.0,"survivals":1,"kills":1}}"#,
                1000 + i
            )
        };
        let many: Vec<String> = (0..MAX_DESTINATIONS as u32 + 50).map(entry).collect();
        let text = format!(
            r#"{{"version":{STATE_VERSION},"learned":[{}]}}"#,
            many.join(",")
        );
        let got = parse_state(text.as_bytes(), Path::new("learned.json"));
        assert_eq!(got.map(|v| v.len()).ok(), Some(MAX_DESTINATIONS));
    }
}
