//! JIDs: the addresses of users, devices, groups and servers.
//!
//! Text forms: `user@server`, `user:device@server`, `user.agent:device@server` (agents on
//! `s.whatsapp.net` only), interop `integrator-user:device@interop`, and a bare server name for a
//! server JID (`s.whatsapp.net`). On the wire a JID takes one of four shapes, chosen by
//! [`Jid::wire_kind`]: `JID_PAIR`, `AD_JID`, `FB_JID` or `INTEROP_JID`.

use std::fmt;
use std::str::FromStr;

/// The servers a JID can name. A JID on any other server is not a JID to this crate: the text
/// forms keep such a value a plain string, and the decoder refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Server {
    /// `s.whatsapp.net`: phone-number users.
    Whatsapp,
    /// `lid`: hidden-identity users.
    Lid,
    /// `g.us`: groups.
    Group,
    /// `broadcast`: broadcast lists and status.
    Broadcast,
    /// `newsletter`: channels.
    Newsletter,
    /// `c.us`: the legacy user server.
    Legacy,
    /// `msgr`: Messenger users.
    Messenger,
    /// `interop`: users of third-party services under the DMA interoperability offer.
    Interop,
    /// `hosted`: hosted business users.
    Hosted,
    /// `hosted.lid`: hosted business users by LID.
    HostedLid,
    /// `bot`: bots.
    Bot,
    /// `call`: call links.
    Call,
}

impl Server {
    /// Every known server, for tests and tools.
    pub const ALL: [Server; 12] = [
        Server::Whatsapp,
        Server::Lid,
        Server::Group,
        Server::Broadcast,
        Server::Newsletter,
        Server::Legacy,
        Server::Messenger,
        Server::Interop,
        Server::Hosted,
        Server::HostedLid,
        Server::Bot,
        Server::Call,
    ];

    /// The server's name as it appears after the `@`.
    pub fn as_str(self) -> &'static str {
        match self {
            Server::Whatsapp => "s.whatsapp.net",
            Server::Lid => "lid",
            Server::Group => "g.us",
            Server::Broadcast => "broadcast",
            Server::Newsletter => "newsletter",
            Server::Legacy => "c.us",
            Server::Messenger => "msgr",
            Server::Interop => "interop",
            Server::Hosted => "hosted",
            Server::HostedLid => "hosted.lid",
            Server::Bot => "bot",
            Server::Call => "call",
        }
    }

    /// The server named `s`, if it is a known one.
    pub fn from_name(s: &str) -> Option<Server> {
        Some(match s {
            "s.whatsapp.net" => Server::Whatsapp,
            "lid" => Server::Lid,
            "g.us" => Server::Group,
            "broadcast" => Server::Broadcast,
            "newsletter" => Server::Newsletter,
            "c.us" => Server::Legacy,
            "msgr" => Server::Messenger,
            "interop" => Server::Interop,
            "hosted" => Server::Hosted,
            "hosted.lid" => Server::HostedLid,
            "bot" => Server::Bot,
            "call" => Server::Call,
            _ => return None,
        })
    }

    /// The `AD_JID` domain type byte of servers that use that shape.
    pub(crate) fn ad_domain(self) -> Option<u8> {
        match self {
            Server::Whatsapp => Some(0),
            Server::Lid => Some(1),
            Server::Hosted => Some(128),
            Server::HostedLid => Some(129),
            _ => None,
        }
    }

    /// Whether a bare server name in text stands for the server JID. Only names with a dot:
    /// `broadcast`, `lid` and the like are ordinary attribute values far more often.
    fn bare_name_is_jid(self) -> bool {
        matches!(self, Server::Whatsapp | Server::Group | Server::Legacy)
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The binary shape a JID is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireKind {
    /// Tag 250: user (or empty) and server.
    Pair,
    /// Tag 247: domain type, device (one byte), user.
    Ad,
    /// Tag 246: user, device (u16), `msgr`.
    Fb,
    /// Tag 245: user, device (u16), integrator (u16), `interop`.
    Interop,
}

/// An owned JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jid {
    /// The user part; empty for a server JID.
    pub user: String,
    /// The server.
    pub server: Server,
    /// Device id; 0 is the primary device.
    pub device: u16,
    /// Agent byte of an `s.whatsapp.net` device JID (the `.agent` of the text form); 0 otherwise.
    pub agent: u8,
    /// Integrator id of an interop JID; 0 otherwise.
    pub integrator: u16,
}

/// Why text is not a JID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JidParseError {
    #[error("no known WhatsApp server after '@'")]
    UnknownServer,
    #[error("device id is not a number in 0..=65535")]
    BadDevice,
    #[error("agent is not a number in 0..=255 or not allowed on this server")]
    BadAgent,
    #[error("interop user part must be 'integrator-user' with a numeric integrator")]
    BadIntegrator,
    #[error("a device or agent on a server that has none")]
    UnexpectedDevice,
}

impl Jid {
    /// `user@server`.
    pub fn new(user: impl Into<String>, server: Server) -> Jid {
        Jid { user: user.into(), server, device: 0, agent: 0, integrator: 0 }
    }

    /// The server JID itself (`s.whatsapp.net`).
    pub fn server(server: Server) -> Jid {
        Jid::new("", server)
    }

    /// `user:device@server`.
    pub fn with_device(user: impl Into<String>, server: Server, device: u16) -> Jid {
        Jid { device, ..Jid::new(user, server) }
    }

    /// An interop JID, `integrator-user:device@interop`.
    pub fn interop(integrator: u16, user: impl Into<String>, device: u16) -> Jid {
        Jid { device, integrator, ..Jid::new(user, Server::Interop) }
    }

    /// The binary shape the canonical encoder writes this JID in.
    pub fn wire_kind(&self) -> WireKind {
        match self.server {
            Server::Interop => WireKind::Interop,
            Server::Messenger => WireKind::Fb,
            Server::Hosted | Server::HostedLid => WireKind::Ad,
            Server::Whatsapp | Server::Lid if self.device != 0 || self.agent != 0 => WireKind::Ad,
            _ => WireKind::Pair,
        }
    }

    /// The JID without its device (and agent): the account it belongs to.
    pub fn to_account(&self) -> Jid {
        Jid { device: 0, agent: 0, ..self.clone() }
    }

    /// Parses the text form; see the module docs.
    pub fn parse(s: &str) -> Result<Jid, JidParseError> {
        let Some((left, server)) = s.rsplit_once('@') else {
            return match Server::from_name(s) {
                Some(server) if server.bare_name_is_jid() => Ok(Jid::server(server)),
                _ => Err(JidParseError::UnknownServer),
            };
        };
        let server = Server::from_name(server).ok_or(JidParseError::UnknownServer)?;
        let has_devices = matches!(
            server,
            Server::Whatsapp | Server::Lid | Server::Hosted | Server::HostedLid | Server::Messenger | Server::Interop
        );
        let (user_agent, device) = match left.rsplit_once(':') {
            Some((u, d)) if has_devices => (u, parse_num::<u16>(d).ok_or(JidParseError::BadDevice)?),
            Some(_) => return Err(JidParseError::UnexpectedDevice),
            None => (left, 0),
        };
        let (user, agent) = match user_agent.rsplit_once('.') {
            Some((u, a)) if server == Server::Whatsapp => {
                let agent = parse_num::<u8>(a).ok_or(JidParseError::BadAgent)?;
                // These values collide with the AD_JID domain types of other servers.
                if matches!(agent, 1 | 128 | 129) {
                    return Err(JidParseError::BadAgent);
                }
                (u, agent)
            }
            _ => (user_agent, 0),
        };
        let (user, integrator) = if server == Server::Interop {
            match user.split_once('-') {
                Some((i, u)) => (u, parse_num::<u16>(i).ok_or(JidParseError::BadIntegrator)?),
                None => return Err(JidParseError::BadIntegrator),
            }
        } else {
            (user, 0)
        };
        Ok(Jid { user: user.to_owned(), server, device, agent, integrator })
    }
}

/// An interop account: one Partner user, named by its integrator id and account number. It has
/// one spelling: `{integrator}-{number}@interop`, both numbers in canonical decimal. However a
/// login, a token claim or a stanza spells an account, it is compared, keyed and logged in this
/// form, and spellings that are not canonical (`0042`, `+42`, a device) are refused rather than
/// folded, so no two texts can name one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InteropAccount {
    pub integrator: u16,
    pub number: u64,
}

/// Why a JID or text does not name an interop account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("not a JID on the interop server")]
    NotInterop,
    #[error("an account JID names no device (device 0)")]
    HasDevice,
    #[error("the account number is not canonical decimal (no sign, no leading zeros, at most 20 digits)")]
    NotCanonical,
}

impl InteropAccount {
    /// The account an interop JID names; the JID must be the account itself (device 0) and its
    /// user part the account number in canonical decimal.
    pub fn from_parts(server: Server, user: &str, device: u16, integrator: u16) -> Result<Self, AccountError> {
        if server != Server::Interop {
            return Err(AccountError::NotInterop);
        }
        if device != 0 {
            return Err(AccountError::HasDevice);
        }
        let number = parse_num::<u64>(user).ok_or(AccountError::NotCanonical)?;
        Ok(InteropAccount { integrator, number })
    }

    /// Parses the canonical text form only (`1-10853634039893@interop`).
    pub fn parse(text: &str) -> Result<Self, AccountError> {
        let jid = Jid::parse(text).map_err(|_| AccountError::NotCanonical)?;
        let account = Self::from_parts(jid.server, &jid.user, jid.device, jid.integrator)?;
        // `Jid::parse` already refuses non-canonical numbers; the round trip makes sure.
        if account.to_string() != text {
            return Err(AccountError::NotCanonical);
        }
        Ok(account)
    }

    /// The account as a JID (device 0).
    pub fn jid(&self) -> Jid {
        Jid::interop(self.integrator, self.number.to_string(), 0)
    }
}

impl fmt::Display for InteropAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}@interop", self.integrator, self.number)
    }
}

impl FromStr for InteropAccount {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Self, AccountError> {
        InteropAccount::parse(s)
    }
}

/// Decimal with no sign, no leading `+`, no leading zeros beyond a lone `0`: the printed form must
/// parse back to the same JID and print the same.
fn parse_num<T: FromStr>(s: &str) -> Option<T> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

impl FromStr for Jid {
    type Err = JidParseError;
    fn from_str(s: &str) -> Result<Jid, JidParseError> {
        Jid::parse(s)
    }
}

/// Writes a JID's text form from its parts; shared by [`Jid`] and the decoder's borrowed view.
pub(crate) fn write_jid(
    f: &mut impl fmt::Write,
    user: &str,
    server: Server,
    device: u16,
    agent: u8,
    integrator: u16,
) -> fmt::Result {
    if user.is_empty() && device == 0 && agent == 0 && integrator == 0 && server.bare_name_is_jid() {
        return f.write_str(server.as_str());
    }
    if server == Server::Interop {
        write!(f, "{integrator}-")?;
    }
    f.write_str(user)?;
    if agent != 0 {
        write!(f, ".{agent}")?;
    }
    if device != 0 {
        write!(f, ":{device}")?;
    }
    write!(f, "@{}", server.as_str())
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_jid(f, &self.user, self.server, self.device, self.agent, self.integrator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for s in [
            "14155551000@s.whatsapp.net",
            "14155551000:7@s.whatsapp.net",
            "14155551000.2:7@s.whatsapp.net",
            "185169143189667:75@lid",
            "123-456@g.us",
            "status@broadcast",
            "100000123:3@msgr",
            "1-10853634039893@interop",
            "42-abc:9@interop",
            "s.whatsapp.net",
            "g.us",
            "5511:0@hosted",
        ] {
            let jid = Jid::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            let printed = jid.to_string();
            assert_eq!(Jid::parse(&printed).unwrap(), jid, "{s}");
            if !s.contains(":0@") {
                assert_eq!(printed, s);
            }
        }
    }

    #[test]
    fn interop_jid_fields() {
        let j = Jid::parse("1-10853634039893@interop").unwrap();
        assert_eq!((j.integrator, j.user.as_str(), j.device), (1, "10853634039893", 0));
        assert_eq!(j.wire_kind(), WireKind::Interop);
    }

    #[test]
    fn an_interop_account_has_one_spelling() {
        let a = InteropAccount::parse("1-10853634039893@interop").unwrap();
        assert_eq!(a, InteropAccount { integrator: 1, number: 10853634039893 });
        assert_eq!(a.to_string(), "1-10853634039893@interop");
        assert_eq!(a.jid().to_string(), "1-10853634039893@interop");
        for bad in ["1-0042@interop", "1-+42@interop", "01-42@interop", "1-42:0@interop", "1-@interop", "1-4 2@interop"]
        {
            assert_eq!(InteropAccount::parse(bad), Err(AccountError::NotCanonical), "{bad}");
        }
        assert_eq!(InteropAccount::parse("1-42:3@interop"), Err(AccountError::HasDevice));
        assert_eq!(InteropAccount::parse("42@s.whatsapp.net"), Err(AccountError::NotInterop));
        assert_eq!(InteropAccount::parse("1-18446744073709551616@interop"), Err(AccountError::NotCanonical));
        for user in ["0042", "+42", "42 ", "", "4e2"] {
            assert_eq!(
                InteropAccount::from_parts(Server::Interop, user, 0, 1),
                Err(AccountError::NotCanonical),
                "{user:?}"
            );
        }
        assert_eq!(InteropAccount::from_parts(Server::Interop, "42", 0, 1).unwrap().to_string(), "1-42@interop");
    }

    #[test]
    fn not_jids() {
        for s in [
            "joe@example.com",
            "lid",
            "broadcast",
            "plain",
            "x:y@s.whatsapp.net",
            "123:70000@lid",
            "abc@interop",
            "x-abc@interop",
            "1:2@g.us",
            "u.1:2@s.whatsapp.net",
            "u:01@s.whatsapp.net",
        ] {
            assert!(Jid::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn all_servers_index_by_discriminant() {
        for (i, s) in Server::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "the decoder stores servers as their discriminant");
            assert_eq!(Server::from_name(s.as_str()), Some(*s));
        }
    }

    #[test]
    fn wire_kinds() {
        assert_eq!(Jid::new("1", Server::Whatsapp).wire_kind(), WireKind::Pair);
        assert_eq!(Jid::with_device("1", Server::Whatsapp, 2).wire_kind(), WireKind::Ad);
        assert_eq!(Jid::new("1", Server::Hosted).wire_kind(), WireKind::Ad);
        assert_eq!(Jid::new("1", Server::Messenger).wire_kind(), WireKind::Fb);
        assert_eq!(Jid::with_device("1", Server::Group, 2).wire_kind(), WireKind::Pair);
    }
}
