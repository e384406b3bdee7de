#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Writes JSON text as bytes: compact (no spaces, as the reference writes),
/// strings escaped as JSON requires and otherwise left as UTF-8, and the
/// efro.message forms of dates, durations and bytes (MESSAGES.md, "Fields").
struct JSONWriter {
    var bytes: [UInt8] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    mutating func byte(_ byte: UInt8) { bytes.append(byte) }

    mutating func null() { bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C]) }

    mutating func bool(_ value: Bool) {
        if value { bytes.append(contentsOf: [0x74, 0x72, 0x75, 0x65]) } else { bytes.append(contentsOf: [0x66, 0x61, 0x6C, 0x73, 0x65]) }
    }

    /// A decimal integer of at most 64 bits, written digit by digit (no String).
    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        if value == 0 { bytes.append(0x30); return }
        var magnitude = UInt64(value.magnitude)
        if value < 0 { bytes.append(0x2D) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        var count = 0
        // Safe: 24 byte slots on the stack, and a 64-bit magnitude has at most 20 digits.
        withUnsafeMutableBytes(of: &digits) { slots in
            while magnitude > 0 {
                let (quotient, remainder) = magnitude.quotientAndRemainder(dividingBy: 10)
                slots[count] = 0x30 + UInt8(truncatingIfNeeded: remainder)
                count += 1
                magnitude = quotient
            }
            while count > 0 { count -= 1; bytes.append(slots[count]) }
        }
    }

    /// A number as Python's `repr` writes a float (the shortest text that
    /// reads back as the same value; Swift's description is the same form).
    mutating func double(_ value: Double, key: (any CodingKey)?) throws {
        guard value.isFinite else {
            throw EncodingError.invalidValue(value, .init(codingPath: key.map { [$0] } ?? [], debugDescription: "\(value) is not a JSON number"))
        }
        if value == value.rounded(.towardZero), abs(value) < 1e16, !(value == 0 && value.sign == .minus) {
            integer(Int64(value)); bytes.append(contentsOf: [0x2E, 0x30]) // "N.0", as Python writes 3.0
        } else {
            bytes.append(contentsOf: value.description.utf8)
        }
    }

    /// A JSON string: quotes, backslashes and control characters escaped;
    /// everything else copied as UTF-8.
    mutating func string(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            bytes.append(0x22)
            var runStart = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                guard byte < 0x20 || byte == 0x22 || byte == 0x5C else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                runStart = index + 1
                switch byte {
                case 0x22: bytes.append(contentsOf: [0x5C, 0x22])
                case 0x5C: bytes.append(contentsOf: [0x5C, 0x5C])
                case 0x0A: bytes.append(contentsOf: [0x5C, 0x6E])
                case 0x0D: bytes.append(contentsOf: [0x5C, 0x72])
                case 0x09: bytes.append(contentsOf: [0x5C, 0x74])
                default:
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    bytes.append(contentsOf: [0x5C, 0x75, 0x30, 0x30, hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...]))
            bytes.append(0x22)
        }
    }

    /// Bytes as standard base64 with padding, in quotes.
    mutating func base64(_ data: UnsafeRawBufferPointer) {
        bytes.append(0x22)
        Base64.encode(data, into: &bytes)
        bytes.append(0x22)
    }

    /// A UTC date as `[year, month, day, hour, minute, second, microsecond]`;
    /// an error for a date Python's datetime cannot hold (years 1-9999).
    mutating func date(_ date: Date) throws {
        guard let parts = UTCDate(date) else {
            // (Not `\(date)`: describing a date that is not finite traps.)
            throw EncodingError.invalidValue(date, .init(codingPath: [], debugDescription: "a date \(date.timeIntervalSinceReferenceDate) s from 2001 is outside the years 1-9999 that efro's datetime holds"))
        }
        bytes.append(0x5B)
        integer(parts.year); bytes.append(0x2C)
        integer(parts.month); bytes.append(0x2C)
        integer(parts.day); bytes.append(0x2C)
        integer(parts.hour); bytes.append(0x2C)
        integer(parts.minute); bytes.append(0x2C)
        integer(parts.second); bytes.append(0x2C)
        integer(parts.microsecond)
        bytes.append(0x5D)
    }

    /// A duration as Python's timedelta: `[days, seconds, microseconds]`,
    /// with 0 <= seconds < 86400 and 0 <= microseconds < 1000000.
    /// An error for one Python's timedelta cannot hold (more than 999 999 999 days).
    mutating func duration(_ duration: Duration) throws {
        // In 128 bits: timedelta.max alone is 8.6e19 microseconds, over Int64.
        let micros = Int128(duration.components.seconds) * 1_000_000 + Int128(duration.components.attoseconds / 1_000_000_000_000)
        var (wideDays, wideRest) = micros.quotientAndRemainder(dividingBy: 86_400_000_000)
        if wideRest < 0 { wideDays -= 1; wideRest += 86_400_000_000 }
        guard (-999_999_999...999_999_999).contains(wideDays) else {
            throw EncodingError.invalidValue(duration, .init(codingPath: [], debugDescription: "\(duration) is longer than efro's timedelta holds (999 999 999 days)"))
        }
        let (days, rest) = (Int64(wideDays), Int64(wideRest))
        bytes.append(0x5B)
        integer(days); bytes.append(0x2C)
        integer(rest / 1_000_000); bytes.append(0x2C)
        integer(rest % 1_000_000)
        bytes.append(0x5D)
    }
}

extension Int64 {
    /// Division rounding toward minus infinity, with a remainder in `0..<divisor`.
    func floorDivided(by divisor: Int64) -> (quotient: Int64, remainder: Int64) {
        var (quotient, remainder) = quotientAndRemainder(dividingBy: divisor)
        if remainder < 0 { quotient -= 1; remainder += divisor }
        return (quotient, remainder)
    }
}

/// A `Date`'s calendar fields in UTC, to the microsecond (the reference's
/// datetime precision), and back.
struct UTCDate: Equatable {
    var year: Int64, month: Int64, day: Int64, hour: Int64, minute: Int64, second: Int64, microsecond: Int64

    /// Seconds from 1970 to 2001, the offset of `Date`'s reference date.
    private static let referenceOffset: Int64 = 978_307_200

    init(year: Int64, month: Int64, day: Int64, hour: Int64, minute: Int64, second: Int64, microsecond: Int64) {
        (self.year, self.month, self.day) = (year, month, day)
        (self.hour, self.minute, self.second, self.microsecond) = (hour, minute, second, microsecond)
    }

    /// The fields of `date`; nil outside the years 1-9999 (or for a date that is not finite).
    init?(_ date: Date) {
        // Rounded to the nearest microsecond from the reference date: a Double
        // of 2001-relative seconds keeps every microsecond within 285 years of
        // 2001 (2^53 microseconds); farther out, dates keep a few microseconds.
        // Years 1-9999 are within ±2.6e11 s of 2001: the product fits an Int64.
        let interval = date.timeIntervalSinceReferenceDate
        guard interval.isFinite, abs(interval) < 3e11 else { return nil }
        let micros = Int64((interval * 1_000_000).rounded()) + Self.referenceOffset * 1_000_000
        let (days, rest) = micros.floorDivided(by: 86_400_000_000)
        (year, month, day) = Self.civil(fromDays: days)
        hour = rest / 3_600_000_000
        minute = rest / 60_000_000 % 60
        second = rest / 1_000_000 % 60
        microsecond = rest % 1_000_000
        guard (1...9999).contains(year) else { return nil }
    }

    /// The date, or nil when a field is out of its range.
    var date: Date? {
        guard (1...12).contains(month), (1...31).contains(day), (0..<24).contains(hour), (0..<60).contains(minute),
              (0..<60).contains(second), (0..<1_000_000).contains(microsecond), (1...9999).contains(year) else { return nil }
        let days = Self.days(fromCivil: year, month, day)
        guard Self.civil(fromDays: days) == (year, month, day) else { return nil } // e.g. February 30
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - Self.referenceOffset
        return Date(timeIntervalSinceReferenceDate: Double(seconds * 1_000_000 + microsecond) / 1_000_000)
    }

    /// Howard Hinnant's days-from-civil: days since 1970-01-01 of a proleptic Gregorian date.
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The inverse of ``days(fromCivil:_:_:)``.
    static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
