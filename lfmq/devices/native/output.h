// output.h: lfmq-run's failures, llama.cpp's log routed to stderr, and the JSON lines it prints on stdout.
#pragma once

#include "llama.h"

#include <cstdio>
#include <stdexcept>
#include <string>

namespace lfmq_run {

struct Failure : std::runtime_error {
    int code;
    Failure(const std::string & m, int c) : std::runtime_error(m), code(c) {}
};
[[noreturn]] inline void fail(const std::string & m) { throw Failure(m, 1); }
[[noreturn]] inline void usage(const std::string & m) { throw Failure(m, 2); }

inline std::string g_last_error;  // llama.cpp's last error line, appended to our messages

inline void log_to_stderr(ggml_log_level level, const char * text, void *) {
    if (level != GGML_LOG_LEVEL_ERROR) return;
    fputs(text, stderr);
    std::string line(text);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (!line.empty()) g_last_error = line;
}

inline std::string with_log(const std::string & m) { return g_last_error.empty() ? m : m + ": " + g_last_error; }

// ---------------------------------------------------------------------------------------------- JSON output

inline size_t utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if ((c >> 5) == 0x6) return 2;
    if ((c >> 4) == 0xe) return 3;
    if ((c >> 3) == 0x1e) return 4;
    return 0;
}

// A JSON string literal; invalid UTF-8 bytes become U+FFFD so that every line parses.
inline std::string jstr(const std::string & s) {
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

inline std::string jnum(double v) { char b[64]; snprintf(b, sizeof b, "%.6g", v); return b; }

inline void emit(const std::string & line) { fputs(line.c_str(), stdout); fputc('\n', stdout); fflush(stdout); }

// Split off the trailing bytes of an incomplete UTF-8 character (a token may end inside one).
inline std::string take_complete(std::string & pending) {
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

}  // namespace lfmq_run
