//! Who gets which copy of a 1:1 message: the decisions of WhatsApp's multi-device fan-out
//! (wa-protocol-notes.md §3.8), pure, over account and device ids.
//!
//! A message in the `<participants>` shape must list exactly the devices that should get it: every
//! device of the recipient, and every other device of the sender (each gets a
//! `DeviceSentMessage` copy). WhatsApp checks the list against the participant hash (`phash`) and
//! answers a stale one with an error; the simulator checks the list itself.

use std::collections::BTreeSet;

/// One device of one account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAddr {
    pub account: String,
    pub device: u16,
}

impl DeviceAddr {
    pub fn new(account: impl Into<String>, device: u16) -> DeviceAddr {
        DeviceAddr { account: account.into(), device }
    }
}

/// How a listed device receives its copy (§3.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A device of the recipient: `<message from=SENDING_DEVICE>`.
    Recipient,
    /// Another device of the sender: `<message from=SENDING_DEVICE recipient=PEER>`, the shape
    /// Baileys' `decodeMessageNode` reads as a message one's own other device sent (`fromMe`,
    /// chat = `recipient`).
    SendersOtherDevice,
    /// The sending device itself: nothing to deliver. Web clients exclude it when they build
    /// the list, but a client that addresses its own devices by LID can miss that it is itself
    /// (Baileys 7 compares the LID's user part with the whole LID JID); it is skipped, not refused.
    Sender,
}

/// Why a device list is refused: the sender's view of the devices is out of date (or wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StaleDevices {
    #[error("{}:{} is not a device of the recipient or another device of the sender", .0.account, .0.device)]
    Unknown(DeviceAddr),
    #[error("{}:{} is listed twice", .0.account, .0.device)]
    Repeated(DeviceAddr),
    #[error("{}:{} exists and is not listed", .0.account, .0.device)]
    Missing(DeviceAddr),
}

/// Checks a `<participants>` list and says how each entry, in order, is delivered.
///
/// `sender` is the sending device and `sender_devices` every device of its account;
/// `recipient_devices` every device of `recipient`'s account. A message to one's own account
/// (`recipient == sender.account`) goes to the sender's other devices as ordinary recipients.
pub fn plan(
    sender: &DeviceAddr,
    sender_devices: &[u16],
    recipient: &str,
    recipient_devices: &[u16],
    listed: &[DeviceAddr],
) -> Result<Vec<Delivery>, StaleDevices> {
    let to_self = recipient == sender.account;
    let mut expected: Vec<(DeviceAddr, Delivery)> =
        recipient_devices.iter().map(|d| (DeviceAddr::new(recipient, *d), Delivery::Recipient)).collect();
    if !to_self {
        expected.extend(
            sender_devices.iter().map(|d| (DeviceAddr::new(sender.account.as_str(), *d), Delivery::SendersOtherDevice)),
        );
    }
    expected.retain(|(addr, _)| addr != sender);
    let mut seen = BTreeSet::new();
    let mut copies = Vec::with_capacity(listed.len());
    for addr in listed {
        if addr == sender {
            copies.push(Delivery::Sender);
            continue;
        }
        let Some((_, copy)) = expected.iter().find(|(e, _)| e == addr) else {
            return Err(StaleDevices::Unknown(addr.clone()));
        };
        if !seen.insert(addr) {
            return Err(StaleDevices::Repeated(addr.clone()));
        }
        copies.push(*copy);
    }
    match expected.into_iter().find(|(addr, _)| !seen.contains(addr)) {
        Some((missing, _)) => Err(StaleDevices::Missing(missing)),
        None => Ok(copies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(account: &str, device: u16) -> DeviceAddr {
        DeviceAddr::new(account, device)
    }

    const PEER: &str = "1-7@interop";
    const ME: &str = "15550001@s.whatsapp.net";

    #[test]
    fn each_recipient_device_and_each_other_sender_device_gets_its_copy() {
        let sender = dev(ME, 2);
        let listed = [dev(PEER, 0), dev(ME, 0), dev(ME, 5)];
        let copies = plan(&sender, &[0, 2, 5], PEER, &[0], &listed).unwrap();
        assert_eq!(copies, [Delivery::Recipient, Delivery::SendersOtherDevice, Delivery::SendersOtherDevice]);
        // A recipient with a phone and a companion: both listed, in any order.
        let copies = plan(&dev(PEER, 0), &[0], ME, &[0, 2], &[dev(ME, 2), dev(ME, 0)]).unwrap();
        assert_eq!(copies, [Delivery::Recipient, Delivery::Recipient]);
    }

    #[test]
    fn a_device_that_does_not_exist_is_stale() {
        // The sender's phone (device 0) is listed but not registered.
        let err = plan(&dev(ME, 2), &[2], PEER, &[0], &[dev(PEER, 0), dev(ME, 0)]).unwrap_err();
        assert_eq!(err, StaleDevices::Unknown(dev(ME, 0)));
        let err = plan(&dev(ME, 2), &[2], PEER, &[0], &[dev(PEER, 3)]).unwrap_err();
        assert_eq!(err, StaleDevices::Unknown(dev(PEER, 3)));
        // A third account is never a target of a 1:1 message.
        let err = plan(&dev(ME, 2), &[2], PEER, &[0], &[dev(PEER, 0), dev("9@s.whatsapp.net", 0)]).unwrap_err();
        assert_eq!(err, StaleDevices::Unknown(dev("9@s.whatsapp.net", 0)));
    }

    #[test]
    fn the_sending_device_itself_is_skipped_not_refused() {
        let copies = plan(&dev(ME, 2), &[2], PEER, &[0], &[dev(PEER, 0), dev(ME, 2)]).unwrap();
        assert_eq!(copies, [Delivery::Recipient, Delivery::Sender]);
        // It does not stand in for a device that is missing.
        let err = plan(&dev(ME, 2), &[2], PEER, &[0], &[dev(ME, 2)]).unwrap_err();
        assert_eq!(err, StaleDevices::Missing(dev(PEER, 0)));
    }

    #[test]
    fn a_device_that_exists_and_is_not_listed_is_stale() {
        let err = plan(&dev(PEER, 0), &[0], ME, &[0, 2], &[dev(ME, 0)]).unwrap_err();
        assert_eq!(err, StaleDevices::Missing(dev(ME, 2)));
        // The sender's own other devices count too.
        let err = plan(&dev(ME, 2), &[0, 2], PEER, &[0], &[dev(PEER, 0)]).unwrap_err();
        assert_eq!(err, StaleDevices::Missing(dev(ME, 0)));
        let err = plan(&dev(PEER, 0), &[0], ME, &[0], &[]).unwrap_err();
        assert_eq!(err, StaleDevices::Missing(dev(ME, 0)));
    }

    #[test]
    fn a_device_listed_twice_is_refused() {
        let err = plan(&dev(PEER, 0), &[0], ME, &[0], &[dev(ME, 0), dev(ME, 0)]).unwrap_err();
        assert_eq!(err, StaleDevices::Repeated(dev(ME, 0)));
    }

    #[test]
    fn a_message_to_ones_own_account_reaches_the_other_devices_as_recipient() {
        let copies = plan(&dev(ME, 2), &[0, 2], ME, &[0, 2], &[dev(ME, 0)]).unwrap();
        assert_eq!(copies, [Delivery::Recipient]);
    }
}
