// lfmq-run: lfmq's own runner against llama.h, shipped in every device bundle (lfmq/devices/build.py builds it).
// It measures what llama-bench measures, the way lfmq/bench/case.py does, and adds what llama-bench lacks: load
// time, time to first token and peak memory from /proc/self/status. It also decodes greedily, token by token.
//
//   lfmq-run bench -m MODEL -p N_PROMPT -n N_GEN [-d DEPTH] [-r REPS] [-t THREADS] [-b N_BATCH] [-ub N_UBATCH]
//                  [-c N_CTX] [--mmap 0|1] [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--seed S] [--ttft-tokens ID,...]
//       prints one JSON line with the keys of lfmq.bench.case.run() plus "system_info" and "runner"
//   lfmq-run generate -m MODEL (--tokens ID,... | --prompt TEXT) -n N [-t THREADS] [-c N_CTX] [--mmap 0|1]
//                     [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--greedy] [--ignore-eos] [--top K]
//       prints {"event":"token","id":..,"text":..} per token (with "top": [[id, logit], ...] under --top K),
//       then {"event":"done","tokens":[...],"ttft_ms":..,"tg_tps":..,"vmhwm":..}
//
// Every failure prints {"event":"error","message":...} on stdout: exit 1, or 2 for a wrong command line.
// llama.cpp's log goes to stderr, errors only, so stdout holds nothing but JSON lines.

#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Failure : std::runtime_error {
    int code;
    Failure(const std::string & m, int c) : std::runtime_error(m), code(c) {}
};
[[noreturn]] void fail(const std::string & m) { throw Failure(m, 1); }
[[noreturn]] void usage(const std::string & m) { throw Failure(m, 2); }

std::string g_last_error;  // llama.cpp's last error line, appended to our messages

void log_to_stderr(ggml_log_level level, const char * text, void *) {
    if (level != GGML_LOG_LEVEL_ERROR) return;
    fputs(text, stderr);
    std::string line(text);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (!line.empty()) g_last_error = line;
}

std::string with_log(const std::string & m) { return g_last_error.empty() ? m : m + ": " + g_last_error; }

// ---------------------------------------------------------------------------------------------- JSON output

size_t utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if ((c >> 5) == 0x6) return 2;
    if ((c >> 4) == 0xe) return 3;
    if ((c >> 3) == 0x1e) return 4;
    return 0;
}

// A JSON string literal; invalid UTF-8 bytes become U+FFFD so that every line parses.
std::string jstr(const std::string & s) {
    std::string out = "\"";
    for (size_t i = 0; i < s.size();) {
        unsigned char c = s[i];
        size_t n = utf8_len(c);
        bool ok = n > 0 && i + n <= s.size();
        for (size_t k = 1; ok && k < n; k++) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
        if (!ok) { out += "\\ufffd"; i++; continue; }
        if (n > 1) { out.append(s, i, n); i += n; continue; }
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; }
                else out += static_cast<char>(c);
        }
        i++;
    }
    return out + "\"";
}

std::string jnum(double v) { char b[64]; snprintf(b, sizeof b, "%.6g", v); return b; }

void emit(const std::string & line) { fputs(line.c_str(), stdout); fputc('\n', stdout); fflush(stdout); }

// Split off the trailing bytes of an incomplete UTF-8 character (a token may end inside one).
std::string take_complete(std::string & pending) {
    size_t cut = pending.size();
    for (size_t back = 1; back <= 3 && back <= pending.size(); back++) {
        unsigned char c = pending[pending.size() - back];
        if ((c >> 6) == 0x2) continue;                 // a continuation byte: look further back
        size_t n = utf8_len(c);
        if (n > back) cut = pending.size() - back;     // the character's start, with bytes still to come
        break;
    }
    std::string out = pending.substr(0, cut);
    pending.erase(0, cut);
    return out;
}

// ---------------------------------------------------------------------------------------------- arguments

struct Args {
    std::map<std::string, std::string> kv;
    std::vector<std::string> flags;
    bool has(const std::string & k) const { return kv.count(k) || std::count(flags.begin(), flags.end(), k); }
    std::string str(const std::string & k, const std::string & dflt = "") const {
        auto it = kv.find(k);
        return it == kv.end() ? dflt : it->second;
    }
    long num(const std::string & k, long dflt) const {
        auto it = kv.find(k);
        if (it == kv.end()) return dflt;
        char * end = nullptr;
        long v = strtol(it->second.c_str(), &end, 10);
        if (it->second.empty() || *end) usage(k + " takes an integer, not '" + it->second + "'");
        return v;
    }
};

Args parse(int argc, char ** argv, const std::vector<std::string> & valued, const std::vector<std::string> & bare) {
    Args a;
    for (int i = 2; i < argc; i++) {
        std::string k = argv[i];
        if (std::find(bare.begin(), bare.end(), k) != bare.end()) { a.flags.push_back(k); continue; }
        if (std::find(valued.begin(), valued.end(), k) == valued.end()) usage("unknown option " + k);
        if (i + 1 >= argc) usage(k + " needs a value");
        a.kv[k] = argv[++i];
    }
    return a;
}

std::vector<llama_token> parse_ids(const std::string & s) {
    std::vector<llama_token> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char * end = nullptr;
        long v = strtol(item.c_str(), &end, 10);
        if (item.empty() || *end) usage("token ids are integers separated by commas, not '" + s + "'");
        out.push_back(static_cast<llama_token>(v));
    }
    return out;
}

ggml_type cache_type(const std::string & name) {
    static const std::map<std::string, ggml_type> types = {
        {"f32", GGML_TYPE_F32}, {"f16", GGML_TYPE_F16}, {"bf16", GGML_TYPE_BF16}, {"q8_0", GGML_TYPE_Q8_0},
        {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1}, {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}};
    auto it = types.find(name);
    if (it == types.end()) usage("unknown KV cache type " + name);
    return it->second;
}

// ---------------------------------------------------------------------------------------------- llama.cpp

using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

struct Settings {
    uint32_t n_ctx = 4096, n_batch = 512, n_ubatch = 512;
    int threads = 0, flash_attn = -1;
    bool use_mmap = true;
    std::string type_k = "f16", type_v = "f16";
};

struct Session {
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    const llama_vocab * vocab = nullptr;
    llama_batch batch{};
    Settings s;
    int n_vocab = 0;
    ~Session() {
        if (batch.token) llama_batch_free(batch);
        if (ctx) llama_free(ctx);
        if (model) llama_model_free(model);
    }

    void open(const std::string & path, const Settings & settings) {
        s = settings;
        s.n_ubatch = std::min(s.n_ubatch, s.n_batch);
        llama_model_params mp = llama_model_default_params();
        mp.load_mode = s.use_mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
        model = llama_model_load_from_file(path.c_str(), mp);
        if (!model) fail(with_log("cannot load the model " + path));
        vocab = llama_model_get_vocab(model);
        n_vocab = llama_vocab_n_tokens(vocab);
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = s.n_ctx;
        cp.n_batch = s.n_batch;
        cp.n_ubatch = s.n_ubatch;
        cp.n_seq_max = 1;
        cp.n_threads = cp.n_threads_batch = s.threads;
        cp.type_k = cache_type(s.type_k);
        cp.type_v = cache_type(s.type_v);
        cp.flash_attn_type = s.flash_attn < 0 ? LLAMA_FLASH_ATTN_TYPE_AUTO
                             : s.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.no_perf = true;
        ctx = llama_init_from_model(model, cp);
        if (!ctx) fail(with_log("cannot create a context for " + path));
        batch = llama_batch_init(static_cast<int32_t>(s.n_batch), 0, 1);
    }

    void reset() { llama_memory_clear(llama_get_memory(ctx), true); }

    // Evaluate tokens at positions start.., in batches of n_batch; logits for the final token only.
    void decode(const std::vector<llama_token> & tokens, int start) {
        const size_t n = tokens.size();
        if (start + n > s.n_ctx) fail("the context of " + std::to_string(s.n_ctx) + " tokens is too small: pass -c");
        for (size_t lo = 0; lo < n; lo += s.n_batch) {
            const size_t m = std::min<size_t>(s.n_batch, n - lo);
            batch.n_tokens = static_cast<int32_t>(m);
            for (size_t i = 0; i < m; i++) {
                if (tokens[lo + i] < 0 || tokens[lo + i] >= n_vocab) fail("token id out of range: " + std::to_string(tokens[lo + i]));
                batch.token[i] = tokens[lo + i];
                batch.pos[i] = static_cast<llama_pos>(start + lo + i);
                batch.n_seq_id[i] = 1;
                batch.seq_id[i][0] = 0;
                batch.logits[i] = lo + i == n - 1;
            }
            int rc = llama_decode(ctx, batch);
            if (rc != 0) fail(with_log("llama_decode failed with code " + std::to_string(rc)));
        }
        llama_synchronize(ctx);
    }

    llama_token argmax() const {
        const float * row = llama_get_logits_ith(ctx, -1);
        if (!row) fail(with_log("no logits after decode"));
        return static_cast<llama_token>(std::max_element(row, row + n_vocab) - row);  // first maximum, as numpy
    }

    // [[id, logit], ...] of the k largest logits of the last decode, largest first
    std::string top_logits(int k) const {
        const float * row = llama_get_logits_ith(ctx, -1);
        std::vector<int> ids(static_cast<size_t>(n_vocab));
        for (int i = 0; i < n_vocab; i++) ids[i] = i;
        k = std::min(k, n_vocab);
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [row](int x, int y) { return row[x] > row[y]; });
        std::string out = "[";
        for (int i = 0; i < k; i++) {
            char b[64];
            snprintf(b, sizeof b, "%s[%d,%.9g]", i ? "," : "", ids[i], row[ids[i]]);
            out += b;
        }
        return out + "]";
    }

    std::string piece(llama_token t) const {
        char buf[256];
        int n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, false);
        if (n < 0) {
            std::string big(static_cast<size_t>(-n), '\0');
            n = llama_token_to_piece(vocab, t, big.data(), -n, 0, false);
            return big.substr(0, std::max(n, 0));
        }
        return std::string(buf, static_cast<size_t>(n));
    }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special) const {
        int need = -llama_tokenize(vocab, text.c_str(), static_cast<int32_t>(text.size()), nullptr, 0, add_special, true);
        std::vector<llama_token> out(static_cast<size_t>(std::max(need, 0)));
        if (need <= 0 || llama_tokenize(vocab, text.c_str(), static_cast<int32_t>(text.size()), out.data(), need,
                                        add_special, true) < 0) fail("cannot tokenize the prompt");
        return out;
    }

    // lfmq.bench.case.CHAT, rendered with llama.cpp's built-in template for the model's (ChatML for LFM2)
    std::vector<llama_token> chat_tokens() const {
        const llama_chat_message chat[2] = {
            {"system", "You are a helpful assistant that extracts structured data from messages. Answer with JSON "
                       "only, using the keys name, date, amount and currency."},
            {"user", "Hi, this is Dana Whitfield. I paid the invoice from March 3rd, 2026 this morning: 1,284.50 euros "
                     "by bank transfer, reference INV-2026-0117. Could you confirm that it arrived and send the receipt "
                     "to my office address? Thanks a lot, Dana."}};
        const char * tmpl = llama_model_chat_template(model, nullptr);
        std::vector<char> buf(4096);
        int n = llama_chat_apply_template(tmpl, chat, 2, true, buf.data(), static_cast<int32_t>(buf.size()));
        if (n < 0) n = llama_chat_apply_template("chatml", chat, 2, true, buf.data(), static_cast<int32_t>(buf.size()));
        if (n < 0 || n > static_cast<int>(buf.size())) fail("cannot render the chat prompt for time to first token");
        return tokenize(std::string(buf.data(), static_cast<size_t>(n)), llama_vocab_get_add_bos(vocab));
    }

    std::string describe() const {
        char buf[256];
        llama_model_desc(model, buf, sizeof buf);
        return buf;
    }
};

std::map<std::string, double> memory_status() {
    std::map<std::string, double> out;
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line)) {
        auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = line.substr(0, colon);
        if (key == "VmHWM" || key == "VmRSS" || key == "RssAnon" || key == "RssFile") {
            std::string lower = key;
            std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
            out[lower] = strtod(line.c_str() + colon + 1, nullptr) / 1024.0;  // kB -> MB
        }
    }
    return out;
}

Settings settings_from(const Args & a) {
    Settings s;
    s.threads = static_cast<int>(a.num("-t", std::max(1u, std::thread::hardware_concurrency())));
    s.n_ctx = static_cast<uint32_t>(a.num("-c", 4096));
    s.n_batch = static_cast<uint32_t>(a.num("-b", 512));
    s.n_ubatch = static_cast<uint32_t>(a.num("-ub", 512));
    long mmap = a.num("--mmap", 1), fa = a.num("-fa", -1);
    if (mmap != 0 && mmap != 1) usage("--mmap takes 0 or 1");
    if (fa < -1 || fa > 1) usage("-fa takes -1, 0 or 1");
    s.use_mmap = mmap == 1;
    s.flash_attn = static_cast<int>(fa);
    s.type_k = a.str("-ctk", "f16");
    s.type_v = a.str("-ctv", "f16");
    cache_type(s.type_k);
    cache_type(s.type_v);
    if (s.threads < 1 || s.n_ctx < 1 || s.n_batch < 1 || s.n_ubatch < 1) usage("-t, -c, -b and -ub must be positive");
    return s;
}

std::vector<llama_token> random_tokens(std::mt19937_64 & rng, int n_vocab, long n) {
    std::uniform_int_distribution<int> pick(0, n_vocab - 1);
    std::vector<llama_token> out(static_cast<size_t>(n));
    for (auto & t : out) t = pick(rng);
    return out;
}

// ---------------------------------------------------------------------------------------------- commands

int bench(int argc, char ** argv) {
    Args a = parse(argc, argv, {"-m", "-p", "-n", "-d", "-r", "-t", "-b", "-ub", "-c", "--mmap", "-fa", "-ctk", "-ctv",
                                "--seed", "--ttft-tokens"}, {});
    if (!a.has("-m")) usage("bench needs -m MODEL");
    const long n_prompt = a.num("-p", 512), n_gen = a.num("-n", 128), depth = a.num("-d", 0), reps = a.num("-r", 5);
    if (n_prompt < 0 || n_gen < 0 || depth < 0 || reps < 1) usage("-p, -n and -d must be >= 0 and -r >= 1");
    std::vector<llama_token> ttft_tokens;
    if (a.has("--ttft-tokens")) ttft_tokens = parse_ids(a.str("--ttft-tokens"));
    Settings settings = settings_from(a);
    std::mt19937_64 rng(static_cast<uint64_t>(a.num("--seed", 42)));

    Session m;
    auto started = clk::now();
    m.open(a.str("-m"), settings);
    const double load_ms = ms_since(started);

    // warm-up, as llama-bench does: one batch of prompt, one generated token
    if (n_prompt) m.decode(random_tokens(rng, m.n_vocab, std::min<long>(n_prompt, m.s.n_batch)), 0);
    if (n_gen) m.decode(random_tokens(rng, m.n_vocab, 1), n_prompt ? std::min<long>(n_prompt, m.s.n_batch) : 0);
    std::vector<long long> samples;
    for (long r = 0; r < reps; r++) {
        m.reset();
        if (depth) m.decode(random_tokens(rng, m.n_vocab, depth), 0);  // before the timer: depth is the setting
        auto t = clk::now();
        if (n_prompt) m.decode(random_tokens(rng, m.n_vocab, n_prompt), static_cast<int>(depth));
        for (long i = 0; i < n_gen; i++)  // one token at a time; the token does not change the work
            m.decode(random_tokens(rng, m.n_vocab, 1), static_cast<int>(depth + n_prompt + i));
        samples.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now() - t).count());
    }
    // a chat-sized prompt from an empty context to its greedy first token: the caller's tokens (lfmq renders its
    // chat through the model's Jinja template), else the same chat through llama.cpp's built-in template matcher
    if (ttft_tokens.empty()) ttft_tokens = m.chat_tokens();
    m.reset();
    auto t_first = clk::now();
    m.decode(ttft_tokens, 0);
    m.argmax();
    const std::string ttft = jnum(ms_since(t_first));
    auto mem = memory_status();  // with the model still loaded

    std::ostringstream o;
    o << "{\"samples_ns\":[";
    for (size_t i = 0; i < samples.size(); i++) o << (i ? "," : "") << samples[i];
    o << "],\"load_ms\":" << jnum(load_ms) << ",\"ttft_ms\":" << ttft << ",\"settings\":{"
      << "\"n_ctx\":" << m.s.n_ctx << ",\"threads\":" << m.s.threads << ",\"n_batch\":" << m.s.n_batch
      << ",\"n_ubatch\":" << m.s.n_ubatch << ",\"use_mmap\":" << (m.s.use_mmap ? "true" : "false")
      << ",\"flash_attn\":" << (m.s.flash_attn < 0 ? "null" : m.s.flash_attn ? "true" : "false")
      << ",\"type_k\":" << jstr(m.s.type_k) << ",\"type_v\":" << jstr(m.s.type_v) << ",\"n_seq_max\":1}"
      << ",\"model_type\":" << jstr(m.describe()) << ",\"model_size\":" << llama_model_size(m.model)
      << ",\"model_n_params\":" << llama_model_n_params(m.model);
    for (const char * k : {"vmhwm", "vmrss", "rssanon", "rssfile"}) o << ",\"" << k << "\":" << jnum(mem[k]);
    o << ",\"system_info\":" << jstr(llama_print_system_info()) << ",\"runner\":\"lfmq-run\"}";
    emit(o.str());
    return 0;
}

int generate(int argc, char ** argv) {
    Args a = parse(argc, argv, {"-m", "--tokens", "--prompt", "-n", "-t", "-c", "--mmap", "-fa", "-ctk", "-ctv",
                                "--top"},
                   {"--greedy", "--ignore-eos"});
    if (!a.has("-m")) usage("generate needs -m MODEL");
    if (a.has("--tokens") == a.has("--prompt")) usage("generate needs one of --tokens ID,... or --prompt TEXT");
    const long n = a.num("-n", 32);
    if (n < 1) usage("-n must be >= 1");
    const bool ignore_eos = a.has("--ignore-eos");
    const long top = a.num("--top", 0);  // diagnostics: the top logits beside each token, for parity checks
    if (top < 0) usage("--top must be >= 0");
    Settings settings = settings_from(a);

    Session m;
    m.open(a.str("-m"), settings);
    std::vector<llama_token> prompt;
    if (a.has("--tokens")) {
        prompt = parse_ids(a.str("--tokens"));
    } else {
        if (a.str("--prompt").empty()) usage("the prompt is empty");
        prompt = m.tokenize(a.str("--prompt"), llama_vocab_get_add_bos(m.vocab));
    }
    if (prompt.empty()) usage("the prompt is empty");

    auto started = clk::now();
    m.decode(prompt, 0);
    llama_token tok = m.argmax();
    const double ttft_ms = ms_since(started);
    std::vector<llama_token> out;
    std::string pending;
    auto t_gen = clk::now();
    long decoded = 0;
    while (true) {
        if (!ignore_eos && llama_vocab_is_eog(m.vocab, tok)) break;
        out.push_back(tok);
        pending += m.piece(tok);
        emit("{\"event\":\"token\",\"id\":" + std::to_string(tok) + ",\"text\":" + jstr(take_complete(pending)) +
             (top ? ",\"top\":" + m.top_logits(static_cast<int>(top)) : std::string()) + "}");
        if (static_cast<long>(out.size()) >= n) break;
        m.decode({tok}, static_cast<int>(prompt.size() + out.size() - 1));
        tok = m.argmax();
        decoded++;
    }
    const double gen_s = ms_since(t_gen) / 1e3;
    auto mem = memory_status();
    std::ostringstream o;
    o << "{\"event\":\"done\",\"tokens\":[";
    for (size_t i = 0; i < out.size(); i++) o << (i ? "," : "") << out[i];
    o << "],\"ttft_ms\":" << jnum(ttft_ms) << ",\"tg_tps\":" << (decoded && gen_s > 0 ? jnum(decoded / gen_s) : "null")
      << ",\"vmhwm\":" << jnum(mem["vmhwm"]) << "}";
    emit(o.str());
    return 0;
}

const char * USAGE =
    "usage: lfmq-run bench -m MODEL -p N_PROMPT -n N_GEN [-d DEPTH] [-r REPS] [-t THREADS] [-b N_BATCH]\n"
    "                      [-ub N_UBATCH] [-c N_CTX] [--mmap 0|1] [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--seed S]\n"
    "                      [--ttft-tokens ID,ID,...]\n"
    "       lfmq-run generate -m MODEL (--tokens ID,ID,... | --prompt TEXT) -n N [-t THREADS] [-c N_CTX]\n"
    "                      [--mmap 0|1] [-fa -1|0|1] [-ctk TYPE] [-ctv TYPE] [--greedy] [--ignore-eos] [--top K]\n";

}  // namespace

int main(int argc, char ** argv) {
    llama_log_set(log_to_stderr, nullptr);
    const std::string cmd = argc > 1 ? argv[1] : "";
    int rc = 0;
    try {
        if (cmd == "-h" || cmd == "--help") { fputs(USAGE, stdout); return 0; }
        if (cmd != "bench" && cmd != "generate") usage(cmd.empty() ? "no command: bench or generate" : "unknown command " + cmd);
        llama_backend_init();
        rc = cmd == "bench" ? bench(argc, argv) : generate(argc, argv);
    } catch (const Failure & e) {
        emit("{\"event\":\"error\",\"message\":" + jstr(e.what()) + "}");
        if (e.code == 2) fputs(USAGE, stderr);
        rc = e.code;
    } catch (const std::exception & e) {
        emit("{\"event\":\"error\",\"message\":" + jstr(e.what()) + "}");
        rc = 1;
    }
    llama_backend_free();
    return rc;
}
