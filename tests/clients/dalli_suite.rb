# frozen_string_literal: true

# Conformance suite: Dalli (Ruby) over the memcached binary protocol.
#
# Usage:
#   ruby dalli_suite.rb HOST:PORT
#
# Dalli 3.0.x speaks only the binary protocol (meta arrived in 3.1, and became
# the default in 4.0); the suite forces protocol: :binary where that option
# exists, so a newer Dalli stays on binary too.
#
# Opcodes Dalli sends: GET (get, get_cas, cas), SET/ADD/REPLACE (with a CAS
# for set_cas/cas), DELETE, INCREMENT/DECREMENT (expiration 0xffffffff when no
# default is given), APPEND, PREPEND, TOUCH, GAT, FLUSH, VERSION, STAT,
# GETKQ...GETKQ NOOP (get_multi), SETQ/DELETEQ... NOOP (multi block).
#
# Exit status 0 only if every test passed; the last line is minitest's summary
# ("N runs, N assertions, 0 failures, 0 errors, 0 skips").

ADDR = ARGV.shift
abort 'usage: ruby dalli_suite.rb HOST:PORT' if ADDR.nil? || ADDR.empty?

require 'logger'
require 'securerandom'
require 'dalli'
require 'minitest/autorun'

Dalli.logger.level = Logger::WARN

puts "dalli suite: server #{ADDR}, dalli #{Dalli::VERSION}, ruby #{RUBY_VERSION}"

class DalliSuite < Minitest::Test
  # down_retry_delay 0 and one failure allowed: a broken connection surfaces
  # as an error in the test that caused it instead of marking the server down.
  def client(**extra)
    opts = { socket_timeout: 5, socket_max_failures: 1, down_retry_delay: 0 }
    opts[:protocol] = :binary if Gem::Version.new(Dalli::VERSION) >= Gem::Version.new('3.1')
    Dalli::Client.new(ADDR, opts.merge(extra))
  end

  def setup
    @dc = client
    @prefix = "dalli-#{name}-#{SecureRandom.hex(4)}-"
  end

  def teardown
    @dc.close
  end

  def key(name)
    "#{@prefix}#{name}"
  end

  def test_version
    versions = @dc.version
    assert_equal [ADDR], versions.keys
    refute_empty versions[ADDR].to_s
  end

  def test_set_get_marshalled_values
    values = ['text', '', 'grüße 世界', 42, 3.5, nil, true, [1, 'two', :three], { a: { b: [1, 2] } }]
    values.each_with_index do |v, i|
      assert @dc.set(key(i), v), "set #{v.inspect}"
      assert_equal v, @dc.get(key(i)) unless v.nil?
      assert_nil @dc.get(key(i)) if v.nil?
    end
  end

  def test_raw_value
    assert @dc.set(key('raw'), "\x00\x01binary\xff".b, nil, raw: true)
    assert_equal "\x00\x01binary\xff".b, @dc.get(key('raw'), raw: true).b
  end

  def test_large_value
    value = SecureRandom.random_bytes(500 * 1024)
    assert @dc.set(key('large'), value, nil, raw: true)
    assert_equal value, @dc.get(key('large'), raw: true).b
  end

  def test_get_missing
    assert_nil @dc.get(key('missing'))
  end

  def test_fetch
    assert_equal 'computed', @dc.fetch(key('f')) { 'computed' }
    assert_equal 'computed', @dc.fetch(key('f')) { 'not called' }
  end

  def test_delete
    assert @dc.set(key('d'), 'x')
    assert @dc.delete(key('d'))
    assert_nil @dc.get(key('d'))
    refute @dc.delete(key('d')), 'deleting a missing key must report false'
  end

  def test_add_replace
    # Dalli 3.0.x returns the response header's CAS for a REPLACE miss (0x01),
    # and 0 is truthy in Ruby: anything but 0 (or nil/false in newer Dallis)
    # means the server put a CAS into an error response, and Dalli would
    # report a failed replace as a success.
    assert_includes [nil, false, 0], @dc.replace(key('ar'), 'r0')
    assert_nil @dc.get(key('ar'))
    assert @dc.add(key('ar'), 'a1')
    refute @dc.add(key('ar'), 'a2')
    assert @dc.replace(key('ar'), 'r1')
    assert_equal 'r1', @dc.get(key('ar'))
  end

  def test_incr_decr
    k = key('n')
    assert_nil @dc.incr(k, 1), 'incr of a missing counter without default must be nil'
    assert_equal 10, @dc.incr(k, 1, nil, 10), 'a missing counter starts at the default'
    assert_equal 11, @dc.incr(k)
    assert_equal 111, @dc.incr(k, 100)
    assert_equal 100, @dc.decr(k, 11)
    assert_equal 0, @dc.decr(k, 1000), 'decr stops at 0'
    assert_nil @dc.decr(key('missing'), 1)
  end

  def test_incr_raw_value
    assert @dc.set(key('c'), '41', nil, raw: true)
    assert_equal 42, @dc.incr(key('c'))
    assert_equal '42', @dc.get(key('c'), raw: true).strip
  end

  def test_append_prepend
    k = key('ap')
    assert @dc.set(k, 'middle', nil, raw: true)
    assert @dc.append(k, '>end')
    assert @dc.prepend(k, 'start<')
    assert_equal 'start<middle>end', @dc.get(k, raw: true)
    refute @dc.append(key('missing'), 'x'), 'append to a missing key must fail'
  end

  def test_get_multi
    present = (0...300).to_h { |i| [key("p#{i}"), "value-#{i}"] }
    present.each { |k, v| assert @dc.set(k, v) }
    missing = (0...100).map { |i| key("m#{i}") }
    keys = (present.keys + missing).shuffle(random: Random.new(1))
    assert_equal present, @dc.get_multi(keys)
    assert_equal({}, @dc.get_multi(missing))
  end

  def test_get_multi_cas
    assert @dc.set(key('a'), 'A')
    got = @dc.get_multi_cas(key('a'), key('missing'))
    assert_equal [key('a')], got.keys
    value, cas = got[key('a')]
    assert_equal 'A', value
    refute_equal 0, cas
  end

  def test_cas_block
    assert @dc.set(key('c'), 1)
    assert @dc.cas(key('c')) { |v| v + 1 }
    assert_equal 2, @dc.get(key('c'))
    assert_nil @dc.cas(key('missing')) { |v| v }, 'cas of a missing key must not yield'
  end

  def test_set_cas_stale
    assert @dc.set(key('s'), 'v1')
    value, cas = @dc.get_cas(key('s'))
    assert_equal 'v1', value
    new_cas = @dc.set_cas(key('s'), 'v2', cas)
    assert new_cas, 'set with the current CAS must succeed'
    refute_equal cas, new_cas, 'a write must change the CAS'
    refute @dc.set_cas(key('s'), 'v3', cas), 'a stale CAS must be refused'
    assert_equal 'v2', @dc.get(key('s'))
    refute @dc.delete_cas(key('s'), cas), 'delete with a stale CAS must be refused'
    assert @dc.delete_cas(key('s'), new_cas)
  end

  def test_touch_gat
    assert @dc.set(key('t'), 'x', 3600)
    assert @dc.touch(key('t'), 1)
    assert_nil @dc.touch(key('missing'), 10)
    assert_equal 'x', @dc.gat(key('t'), 3600)
    assert_nil @dc.gat(key('missing'), 10)
  end

  def test_quiet_multi_block
    keys = (0...50).map { |i| key("q#{i}") }
    @dc.multi do
      keys.each { |k| @dc.set(k, 'quiet') }
      @dc.delete(keys.first)
    end
    got = @dc.get_multi(keys)
    assert_equal keys.drop(1).sort, got.keys.sort
  end

  def test_flush
    assert @dc.set(key('f'), 'x')
    assert @dc.flush
    assert_nil @dc.get(key('f'))
  end

  def test_stats
    stats = @dc.stats
    assert_equal [ADDR], stats.keys
    refute_empty stats[ADDR]
  end

  def test_reconnect
    assert @dc.set(key('r'), 'before')
    @dc.close
    assert_equal 'before', @dc.get(key('r'))
  end
end
